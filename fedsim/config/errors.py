"""Scenario errors: one line naming the file, the key path, the line and the rule."""

from __future__ import annotations

__all__ = ["ScenarioError"]


class ScenarioError(ValueError):
    """A scenario broke a rule.

    ``str(err)`` is one line: ``FILE:LINE: KEY.PATH: RULE`` (line and key
    path omitted when unknown). The CLI prints it and exits with code 2.
    """

    def __init__(self, rule: str, *, file: str | None = None, key: str | None = None, line: int | None = None) -> None:
        self.rule = " ".join(str(rule).split())  # always one line
        self.file = file
        self.key = key
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file or "<scenario>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.key:
            parts.append(self.key)
        parts.append(self.rule)
        return ": ".join(parts)
