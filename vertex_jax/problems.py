"""One error type for inputs checked all at once: every problem listed, one per line."""

from __future__ import annotations

from collections.abc import Sequence

from vertex_jax.errors import Explanation, UserError


class ProblemsError(UserError, ValueError):
    """``source`` (a file or table name) and every problem found in it."""

    todo = "fix these and re-run; every problem is listed at once"

    def __init__(self, source: str, problems: Sequence[str]):
        self.source, self.problems = source, list(problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n  " + "\n  ".join(self.problems))

    def explanation(self) -> Explanation:
        return Explanation(f"{len(self.problems)} problem(s) in {self.subject()}", self.source, self.todo,
                           tuple(self.problems))

    def subject(self) -> str:
        """What the problems are in, as the block's first line says it."""
        return self.source
