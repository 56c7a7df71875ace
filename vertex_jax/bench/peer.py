"""Run the PyTorch peer (``benchmarks/torch_peer.py``) at the shapes of a JAX record.

The peer is a script of the source checkout, started as a subprocess with this Python,
so PyTorch is never imported here (nor needed by the package).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from vertex_jax.train.augment import AugmentConfig
from vertex_jax.errors import ConfigError, MissingInputError

__all__ = ["PEER_SCRIPT", "peer_command", "run_peer", "format_comparison"]

PEER_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "torch_peer.py"
_AMP = {"float32": "none", "bfloat16": "bf16"}


def peer_command(record: dict[str, Any], flags: str, *, tasks: int, augment: Any, steps: int,
                 repeats: int, json_path: Path) -> list[str]:
    """The peer's command line for the training configuration of ``record``; ``augment``
    is the run's ``config.augment``."""
    if record["dtype"] not in _AMP:
        raise ConfigError(f"the PyTorch peer has no counterpart for dtype {record['dtype']!r}; "
                         f"use one of {sorted(_AMP)}")
    cmd = [sys.executable, str(PEER_SCRIPT), "--variant", record["variant"],
           "--height", str(record["height"]), "--width", str(record["width"]),
           "--batch", str(record["batch"]), "--tasks", str(tasks), "--amp", _AMP[record["dtype"]],
           "--steps", str(steps), "--repeats", str(repeats), "--json", str(json_path)]
    if augment.enabled:
        aug = AugmentConfig.from_config(augment)
        cmd += ["--max-rotation", str(aug.max_rotation_deg), "--max-scale", str(aug.max_scale_delta),
                "--max-noise", str(aug.max_noise_std), "--flip", str(aug.flip_prob)]
    else:
        cmd.append("--no-augment")
    if record["remat"]:
        cmd.append("--grad-checkpointing")
    return cmd + shlex.split(flags)


def run_peer(record: dict[str, Any], flags: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(environment, record) of the peer at ``record``'s shapes, extra peer ``flags``
    (e.g. ``"--compile --channels-last"``)."""
    if not PEER_SCRIPT.is_file():
        raise MissingInputError(f"{PEER_SCRIPT} not found: the PyTorch peer is part of the "
                                f"source checkout, not of the installed package")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        subprocess.run(peer_command(record, flags, json_path=out, **kwargs), check=True)
        result = json.loads(out.read_text())
    return result["environment"], result["records"][0]


def _label(record: dict[str, Any]) -> str:
    on = [k for k in ("compile", "channels_last") if record["options"].get(k)]
    threads = record["options"].get("threads")
    return "torch " + ("+".join(on) if on else "eager") + (f" {threads} thr" if threads else "")


def format_comparison(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Side-by-side images/s of (JAX record, peer record) pairs and their ratio."""
    header = ("variant", "canvas", "batch", "dtype", "remat", "JAX options", "peer",
              "JAX img/s", "peer img/s", "JAX/peer")
    rows = [(j["variant"], f"{j['height']}x{j['width']}", str(j["batch"]), j["dtype"], str(j["remat"]),
             ",".join(f"{k}={v}" for k, v in j["options"].items()) or "-", _label(p),
             f"{j['images_per_s']:.3g}", f"{p['images_per_s']:.3g}",
             f"{j['images_per_s'] / p['images_per_s']:.2f}") for j, p in pairs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [header, *rows])
