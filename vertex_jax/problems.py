"""One error type for inputs checked all at once: every problem listed, one per line."""

from __future__ import annotations

from collections.abc import Sequence


class ProblemsError(ValueError):
    """``source`` (a file or table name) and every problem found in it."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source, self.problems = source, list(problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n  " + "\n  ".join(self.problems))
