"""Errors that name exactly what is wrong, in the `file › key: problem` form mail admins grep for."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration, rule or template file that cannot be used; the daemon refuses to start (exit 2)."""

    def __init__(self, file: str, where: tuple[str, ...] | list[str], problem: str) -> None:
        self.file = file
        self.where = tuple(where)
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [self.file, *self.where]
        return f"{' › '.join(parts)}: {self.problem}"
