"""Errors kaibuild reports to users: each says what is wrong, where, and the fix."""

from __future__ import annotations


class KaibuildError(Exception):
    """A failure the user can act on.

    `where` names the file (and line), target or setting at fault; `fix` says
    what to change. The CLI prints all three and exits non-zero.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigError(KaibuildError):
    """kaibuild.toml (or a setting from the command line) is invalid."""


class DockerfileError(KaibuildError):
    """A Dockerfile cannot be analysed (syntax, unknown stage, unresolved ARG)."""


class PlatformMismatch(KaibuildError):
    """An image or binary is not for the platform that was asked for."""


class ActionFailed(KaibuildError):
    """A rule's action ran and failed; `log_tail` holds the end of its output."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None, log_tail: str = ""):
        super().__init__(message, where=where, fix=fix)
        self.log_tail = log_tail
