"""One clear message per user error, without a traceback, for the command-line entry points.

    sys.exit(user_errors(main)())     # argparse entry points (predict, evaluate, ...)
    app.run(user_errors(main))        # absl entry points (vertex_jax.main)

A *user error* is one of the project's own error types (a manifest or score table with
problems, an unreadable image or one that is not an image, an export that did not verify,
a weight file that does not fit, a damaged cache, a full disk at a checkpoint save, a
calibration that cannot be fitted, a diverged loss) or a ``ValueError`` /
``FileNotFoundError`` that the project's code raised itself with a message (a split smaller
than one batch, an invalid config value, a checkpoint that is not there). It is printed as
one block: what is wrong, which file/line/field, what to do; the exit status is 2.
Anything else is a bug and keeps its traceback. ``--verbosity=1`` (or more), or the
environment variable ``VERTEX_TRACEBACK=1``, shows the traceback of user errors too.
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TRACEBACK_ENV = "VERTEX_TRACEBACK"
EXIT_USER_ERROR = 2
MAX_PROBLEMS = 20  # problems listed in the block; the rest are counted
_PACKAGE = str(Path(__file__).resolve().parent)
_VERBOSITY = re.compile(r"^--verbosity(?:=(-?\d+))?$")
_CONFIG_WORDS = re.compile(r"must be|expected one of|unknown|not supported|does not divide")


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What is wrong, where, what to do, and any listed problems."""

    what: str
    where: str = ""
    todo: str = ""
    details: tuple[str, ...] = ()

    def render(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"  in: {self.where}")
        lines += [f"  - {d}" for d in self.details[:MAX_PROBLEMS]]
        if len(self.details) > MAX_PROBLEMS:
            lines.append(f"  … and {len(self.details) - MAX_PROBLEMS} more")
        if self.todo:
            lines.append(f"what to do: {self.todo}")
        lines.append(f"(for the traceback add --verbosity=1 or set {TRACEBACK_ENV}=1)")
        return "\n".join(lines)


def _own_classes(error: BaseException) -> set[str]:
    return {c.__name__ for c in type(error).__mro__ if c.__module__.startswith("vertex_jax")}


def _raised_by_project(error: BaseException) -> bool:
    """Whether the innermost frame is a ``raise`` statement in this package."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    return (os.path.realpath(filename).startswith(_PACKAGE + os.sep)
            and linecache.getline(filename, tb.tb_lineno).strip().startswith("raise"))


def _problems(error: Any) -> Explanation:
    manifest = "ManifestError" in _own_classes(error)
    todo = ("fix these in the CSV (columns: README 'Manifest') and re-run; every problem is listed at once"
            if manifest else "fix these and re-run; every problem is listed at once")
    return Explanation(f"{len(error.problems)} problem(s) in {'the manifest' if manifest else error.source}",
                       error.source, todo, tuple(error.problems))


def _image(error: Any) -> Explanation:
    recorded = re.search(r"\(recorded in (.+?);", error.reason)
    listing = (f"{recorded.group(1)}/unreadable.csv" if recorded
               else "unreadable.csv of the data cache (<data_dir>/cache/<fingerprint>/)")
    kind = "not an image" if "NotAnImageError" in _own_classes(error) else "cannot read an image"
    return Explanation(f"{kind}: {error.reason}", error.path,
                       "re-run with --config.data.skip_unreadable=True to leave out unreadable images; "
                       f"they are listed in {listing}")


def _message(error: BaseException) -> Explanation | None:
    """A ValueError / FileNotFoundError the project raised itself, by what it says."""
    text = str(error)
    if isinstance(error, FileNotFoundError):
        if "checkpoint" in text or "training run" in text or "item" in text:
            return Explanation(text, todo="give a run's workdir, its checkpoints folder or one step "
                                          "folder (<workdir>/checkpoints/<step>) of a finished training run")
        return Explanation(text, todo="check the path")
    if "fewer than one batch" in text:
        return Explanation(text, todo="use a smaller --config.batch_size, or give that split more images "
                                      "(--config.data.split_fractions, or more rows in the manifest)")
    if _CONFIG_WORDS.search(text):
        return Explanation(f"invalid setting: {text}", todo="correct that value, on the command line "
                           "(--config.<section>.<field>=...) or in the config file")
    return Explanation(text)


def explain(error: BaseException) -> Explanation | None:
    """What to tell the user about ``error``; None when it is not a user error (a bug)."""
    own = _own_classes(error)
    if "ProblemsError" in own:
        return _problems(error)
    if "ImageReadError" in own:
        return _image(error)
    if "ExportError" in own:
        return Explanation(str(error), todo="nothing was written; install what the message names, or "
                                            "look at the differences it reports")
    if "WeightImportError" in own:
        return Explanation(str(error), todo="check --config.model.init_weights (a Keras .h5 or timm "
                                            ".safetensors file of the same EfficientNet variant)")
    if own & {"CacheDamagedError", "NonFiniteLossError", "CheckpointSaveError", "CalibrationError"}:
        return Explanation(str(error))
    if isinstance(error, (ValueError, FileNotFoundError)) and _raised_by_project(error):
        return _message(error)
    return None


def traceback_wanted(argv: Sequence[str] | None = None) -> bool:
    """``--verbosity`` >= 1 on the command line (or absl's parsed flag), or ``VERTEX_TRACEBACK``."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if match := _VERBOSITY.match(arg):
            value = match.group(1) if match.group(1) is not None else (args[i + 1] if i + 1 < len(args) else "0")
            if value.lstrip("-").isdigit() and int(value) >= 1:
                return True
    return False


def _without_verbosity(args: list[str]) -> list[str]:
    """``args`` less ``--verbosity=N`` / ``--verbosity N`` (for argparse entry points)."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif match := _VERBOSITY.match(arg):
            skip = match.group(1) is None and i + 1 < len(args)
        else:
            out.append(arg)
    return out


def user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an entry point ``main(argv)``: user errors become one message and exit status 2.

    Called without ``argv`` (argparse entry points), ``main`` gets the command line less
    ``--verbosity``; an absl entry point gets absl's ``argv`` as it is.
    """
    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> Any:
        verbose = traceback_wanted()
        try:
            return main(_without_verbosity(sys.argv[1:]) if argv is None else argv)
        except Exception as error:  # noqa: BLE001 - sorted into user errors and bugs below
            explanation = explain(error)
            if explanation is None or verbose:
                raise
            print(explanation.render(), file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
    return run
