"""The errors a user can cause, and the exit code each one maps to.

Exit codes (the contract every action and CI job relies on):
  0  done
  1  a check failed (parity, accuracy budget, smoke test, canary health)
  2  bad usage, config or input
A stack trace is for bugs only; everything a user can cause is one of these.
"""

from __future__ import annotations

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_BUG = 3


class MldeployError(Exception):
    """A problem we can explain in one line, optionally pointing at a file and line."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None, file: str | None = None,
                 line: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.file = file
        self.line = line

    def describe(self) -> str:
        """The message and what to do about it, without the place."""
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def one_line(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return where + self.describe()


class UsageError(MldeployError):
    """Bad usage, config or input: exit 2."""

    operator: str | None = None  # a conversion's: the operator that could not be exported, where known


class CheckFailed(MldeployError):
    """A check ran and did not pass: exit 1."""

    exit_code = EXIT_CHECK_FAILED


def one_line(e: BaseException) -> str:
    """An error in one line, as a restore or a read-back goes on from it: ours as it reads, another
    (an SDK's, the network's) named by its type."""
    if isinstance(e, MldeployError):
        return e.message
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
