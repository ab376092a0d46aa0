"""Exceptions that carry what the operator should do next.

Every error ColdCopy raises on purpose is a ``ColdCopyError``: the CLI prints its message and
hint and exits with its ``exit_code``; the HTTP layer maps it to a 4xx.  Messages must never
contain secrets (passwords, keys); callers pass only names and numbers.
"""

from __future__ import annotations


class ColdCopyError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.hint}" if self.hint else self.message


class ConfigError(ColdCopyError):
    """Missing or malformed settings; raised before anything connects."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(
            f"configuration is not usable ({count}):\n{lines}",
            "set the variables in the environment or in .env (see .env.example)",
        )


class InvalidNameError(ColdCopyError):
    exit_code = 2


class InputError(ColdCopyError):
    """A request that cannot be acted on as given (exit 2); refused before anything is written."""

    exit_code = 2


class NotFoundError(ColdCopyError):
    exit_code = 3


class IntegrityError(ColdCopyError):
    """Stored data does not match what was written: damaged, truncated, reordered or substituted."""

    exit_code = 4


class WrongKeyError(IntegrityError):
    """The configured BACKUP_ENCRYPTION_KEY cannot open this backup."""


class DatabaseError(ColdCopyError):
    """A PostgreSQL tool or connection failed."""

    exit_code = 5


class StorageError(ColdCopyError):
    exit_code = 6


class ConflictError(ColdCopyError):
    """Something already exists that we refuse to overwrite."""

    exit_code = 7


class EnvironmentProblem(ColdCopyError):
    """Something the machine or a server lacks (an extension, a tool, a scratch server); the
    backup is not at fault."""

    exit_code = 9
