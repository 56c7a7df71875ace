"""Train VERTE-X: ``python -m vertex_jax.main --config=configs/xray.py --workdir=runs/xray``.

Any config field can be overridden (``--config.optim.lr=3e-4``); variants are chosen by
argument (``--config=configs/xray.py:demo``). Re-running the same command on the same
workdir resumes. Multi-host: ``--coordinator=host:port --num_processes=N --process_id=i``,
or nothing on SLURM/Kubernetes (auto-detected).
"""

if __name__ == "__main__":  # first, before the heavy imports: see vertex_jax.hugepages
    from vertex_jax.hugepages import restart_with_hugepages

    restart_with_hugepages()

from absl import app, flags, logging
from ml_collections import config_flags

from vertex_jax.cli import absl_flags_parser, user_errors
from vertex_jax.config_files import config_path
from vertex_jax.compile_cache import enable_compilation_cache
from vertex_jax.xla_flags import apply_preset
from vertex_jax.train.loop import train_and_evaluate
from vertex_jax.mesh import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", str(config_path("xray")),
                                          "Run configuration: a shipped name (xray, vfa) or a file, [:variant].")
_WORKDIR = flags.DEFINE_string("workdir", "runs/xray", "Directory for checkpoints, logs and data.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "Multi-host coordinator address host:port.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-host).")


def main(argv: list[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:  # library INFO chatter (Orbax) off unless asked
        logging.set_verbosity(logging.WARNING)
    apply_preset(_CONFIG.value.xla_preset)  # before the backend starts
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    enable_compilation_cache()  # VERTEX_COMPILE_CACHE=off turns it off
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(user_errors(main), flags_parser=absl_flags_parser())
