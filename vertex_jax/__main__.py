"""The ``vertex`` command: ``vertex <command> [options]`` = ``python -m vertex_jax.<module> [options]``.

One command with subcommands rather than a script per job: one name on the PATH (no
clash with other tools' ``predict`` or ``evaluate``), one listing of everything the
package does (``vertex`` or ``python -m vertex_jax`` alone), and the same options as the
``python -m`` form, which stays the reference in the docs because it needs no PATH.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

# command -> (module run as __main__, one line on what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "manifest": ("vertex_jax.manifest", "a training manifest from a folder of DICOMs, labels joined by any id"),
    "train": ("vertex_jax.main", "train (or resume) a model: --config=xray[:demo] --workdir=DIR"),
    "predict": ("vertex_jax.predict", "score a folder, a manifest or a run's split; maps and overlays"),
    "evaluate": ("vertex_jax.evaluate", "evaluation report of a run: AUROC with intervals, calibration"),
    "calibrate": ("vertex_jax.calibrate", "fit the maps from scores to probabilities (a split or a site's cases)"),
    "validate": ("vertex_jax.validate", "external validation: a second cohort (or shift, or manifest) vs internal"),
    "export": ("vertex_jax.export", "export a checkpoint to ONNX and TF SavedModel, verified"),
    "serve": ("vertex_jax.serve", "score uploads over HTTP with an exported ONNX model (no JAX)"),
    "prognosis": ("vertex_jax.prognosis", "incident fracture: do the scores add to clinical factors?"),
    "bench": ("vertex_jax.bench", "throughput of the training/eval step, the input and the loop"),
    "synthetic": ("vertex_jax.synthetic", "write a synthetic cohort (DICOM/PNG, manifest, annotations)"),
    "models": ("vertex_jax.models", "an EfficientNet's parameters, GMACs and activation memory"),
}


# a module some command imports -> the extra that installs it (pyproject.toml)
EXTRA_OF = {**dict.fromkeys(("jax", "jaxlib", "flax", "optax", "orbax", "grain", "array_record",
                             "ml_collections", "absl", "sklearn", "tensorboardX", "h5py",
                             "safetensors", "matplotlib"), "train"),
            "lifelines": "prognosis", "dicomweb_client": "pacs", "onnxruntime": "serve", "fastapi": "serve",
            "uvicorn": "serve", "starlette": "serve", "python_multipart": "serve", "jax2onnx": "export", "onnx": "export",
            "tensorflow": "export", "torch": "peer", "timm": "peer"}


def usage() -> str:
    """The list of commands, as ``vertex`` alone prints it."""
    width = max(map(len, COMMANDS))
    lines = ["usage: vertex <command> [options]   (or: python -m vertex_jax.<module> [options])", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {about}   [{module}]" for name, (module, about) in COMMANDS.items()]
    lines += ["", "vertex <command> --help shows a command's options. On a user error every command "
              "prints one block and exits 2; --verbosity=1 or VERTEX_TRACEBACK=1 adds the traceback."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vertex <command> ...``; with no command (or ``-h``) print the list."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"vertex: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    sys.argv = [f"vertex {name}", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ModuleNotFoundError as error:
        extra = EXTRA_OF.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: vertex {name} needs {error.name}, which this install lacks\n"
              f"what to do: pip install 'vertex_jax[{extra}]'", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
