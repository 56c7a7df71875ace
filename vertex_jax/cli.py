"""One clear message per user error, without a traceback, for the command-line entry points.

    sys.exit(user_errors(main)())     # argparse entry points (predict, evaluate, ...)
    app.run(user_errors(main))        # absl entry points (vertex_jax.main, bench)

A *user error* is a :class:`vertex_jax.errors.UserError`, raised where the problem is found
and carrying what is wrong, where and what to do. It is printed as one block; the exit
status is 2. Anything else is a bug and keeps its traceback (exit status 1).
``--verbosity=1`` (or more), or the environment variable ``VERTEX_TRACEBACK=1``, shows the
traceback of user errors too.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vertex_jax.errors import TRACEBACK_ENV, Explanation, UserError

EXIT_USER_ERROR = 2
_VERBOSITY = re.compile(r"^--verbosity(?:=(-?\d+))?$")


def explain(error: BaseException) -> Explanation | None:
    """What to tell the user about ``error``; None when it is not a user error (a bug)."""
    return error.explanation() if isinstance(error, UserError) else None


def add_verbosity(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Show ``--verbosity`` in an argparse entry point's ``--help`` (:func:`user_errors`
    takes it off the command line before the parser sees it)."""
    parser.add_argument("--verbosity", type=int, default=0, metavar="N",
                        help=f"1: show the traceback of a user error (or set {TRACEBACK_ENV}=1)")
    return parser


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


def _config_fields(config: Any, prefix: str = "") -> list[str]:
    """Every dotted field path of a ConfigDict."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.append(path)
        if hasattr(value, "items") and not isinstance(value, dict):
            out += _config_fields(value, path + ".")
    return out


def _flag_error(error: BaseException, argv: Sequence[str], flag: str) -> Explanation:
    """The block for a command line absl could not parse (``flag``: the config flag)."""
    import difflib

    from vertex_jax import config_files

    if isinstance(error, (AttributeError, KeyError)):  # an override naming no config field
        given = [a.split("=", 1)[0][len(f"--{flag}."):] for a in argv if a.startswith(f"--{flag}.")]
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
        known = _config_fields(config_files.load_config(spec)) if spec else []
        unknown = [g for g in given if known and g not in known] or given
        close = difflib.get_close_matches(unknown[0], known, n=3) if unknown and known else []
        hint = f"; closest: {', '.join(close)}" if close else ""
        return Explanation(f"unknown config field --{flag}.{unknown[0] if unknown else '?'}{hint}",
                           where=spec or "",
                           todo="use a field the config file has (its get_config lists them)")
    cause = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if cause is not error and str(cause) and str(cause).splitlines()[0] not in text:
        text += f" ({str(cause).splitlines()[0]})"
    return Explanation(f"invalid command line: {text}",
                       todo=f"check the flags; --{flag}=NAME[:variant] names a shipped config "
                            f"(xray, vfa) or a config file")


def absl_flags_parser(flag: str = "config") -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``absl.app.run``: ``--config=xray:demo`` resolved to the shipped
    file, and a command line absl cannot parse (an unknown or mistyped config field, a
    config file that is not there) one block and exit status 2 instead of a traceback."""
    def parse(argv: list[str]) -> list[str]:
        from absl import flags

        from vertex_jax.config_files import config_path, resolve_config_argument

        argv = resolve_config_argument(list(argv), flag)
        try:
            for arg in argv[1:]:
                if arg.startswith(f"--{flag}="):
                    config_path(arg.split("=", 1)[1].partition(":")[0])  # a clear error if absent
            rest = flags.FLAGS(argv)
            if flag in flags.FLAGS:
                getattr(flags.FLAGS, flag).keys  # a config file that failed to load raises here
            return rest
        except Exception as error:  # noqa: BLE001 - every parse failure is the user's command line
            if traceback_wanted(argv[1:]):
                raise
            block = explain(error) or _flag_error(error, argv[1:], flag)
            print(block.render(), file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
    return parse
