"""The GPU check's PyTorch peer point: ``torch.compile`` compiling in the background while
JAX points run, then timed alone (``benchmarks/torch_peer.py`` through
:mod:`vertex_jax.bench.peer`)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from vertex_jax.bench.gpu_points import Point

__all__ = ["PeerRun"]


class PeerRun:
    """The PyTorch peer, compiled in the background from its start (after the check's
    isolated points: cold compiles are measured alone). Its compile and its warm-up steps
    run beside JAX points; it waits for its turn (:meth:`finish`) before it times anything,
    so its timed steps never share the GPU."""

    def __init__(self, point: Point, args: argparse.Namespace, config: Any) -> None:
        from vertex_jax.bench.peer import PEER_SCRIPT, peer_command
        from vertex_jax.models.build import tasks_of

        self.point, self.proc, self.reason = point, None, None
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
            self.reason = "torch or timm not importable"
            return
        if not PEER_SCRIPT.is_file():
            self.reason = f"{PEER_SCRIPT} missing (not a source checkout)"
            return
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_peer_"))
        shape = {"variant": config.model.variant, "height": config.data.canvas[0],
                 "width": config.data.canvas[1], "batch": point.batch, "dtype": args.dtype,
                 "remat": point.remat}
        self.cmd = peer_command(shape, point.peer_flags, tasks=len(tasks_of(config)),
                                augment=config.augment, steps=args.steps, repeats=args.repeats,
                                json_path=self.tmp / "peer.json")
        self.cmd += ["--ready-file", str(self.tmp / "ready"), "--go-file", str(self.tmp / "go")]
        env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(max(1, (os.cpu_count() or 4) // 4)))
        self.log = open(self.tmp / "peer.log", "w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def finish(self, timeout: float) -> dict[str, Any]:
        """Let it time its steps now (waiting for its compile if need be); its result."""
        if self.proc is None:
            return {"status": "unavailable", "reason": self.reason}
        deadline = time.perf_counter() + timeout
        while not (self.tmp / "ready").exists() and self.proc.poll() is None \
                and time.perf_counter() < deadline:
            time.sleep(0.1)
        ready_after = time.perf_counter() - self.started
        (self.tmp / "go").write_text("go")
        try:
            rc = self.proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            self.close()
            return {"status": "timeout", "error": f"over {timeout:.0f} s", "command": self.cmd}
        self.log.close()
        tail = (self.tmp / "peer.log").read_text()[-2000:]
        print(tail, flush=True)
        out = self.tmp / "peer.json"
        if rc != 0 or not out.is_file():
            return {"status": "error", "error": f"peer exited {rc}: {tail}", "command": self.cmd}
        result = json.loads(out.read_text())
        return {"status": "ok", "environment": result["environment"], "record": result["records"][0],
                "command": self.cmd, "ready_after_s": ready_after}

    def close(self) -> None:
        """Stop it if it still runs (the check ended first)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
