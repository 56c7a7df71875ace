"""The user errors: one exception family, raised where the problem is found.

A :class:`UserError` carries what is wrong, where (file, row, field) and what to do; every
entry point prints it as one block and exits with status 2 (:mod:`vertex_jax.cli`). Any
other exception is a bug and keeps its traceback. Each subclass also derives from the
builtin it stands for (``ValueError``, ``FileNotFoundError``), so code that catches those
keeps working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

TRACEBACK_ENV = "VERTEX_TRACEBACK"
MAX_PROBLEMS = 20  # problems listed in the block; the rest are counted


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


class UserError(Exception):
    """A problem with what the user gave: a file, a setting, an argument, the data."""

    todo: str = ""  # the advice, per class; an instance may carry its own

    def __init__(self, what: str = "", *args: object, where: str = "", todo: str | None = None,
                 details: Sequence[str] = ()):
        super().__init__(what, *args)
        self.where, self.details = where, tuple(details)
        if todo is not None:
            self.todo = todo

    def explanation(self) -> Explanation:
        """The block the entry points print (the message is ``str(self)``)."""
        return Explanation(str(self), getattr(self, "where", ""), self.todo,
                           tuple(getattr(self, "details", ())))


class ConfigError(UserError, ValueError):
    """An invalid or unknown setting (config field or command-line option)."""

    todo = ("correct that value, on the command line (--config.<section>.<field>=... or the "
            "option named) or in the config file")

    def explanation(self) -> Explanation:
        base = super().explanation()
        return dataclasses.replace(base, what=f"invalid setting: {base.what}")


class MissingInputError(UserError, FileNotFoundError):
    """A file, folder, run or checkpoint that is not there."""

    todo = "check the path"


class InputDataError(UserError, ValueError):
    """Input that exists but cannot be used as it is (an empty split, a malformed file)."""

    todo = "fix the input named above and re-run"
