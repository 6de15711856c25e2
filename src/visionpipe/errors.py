"""User-facing errors: each says which file or setting is wrong, what is wrong, and what to do."""

from __future__ import annotations


class VisionpipeError(Exception):
    """Base class for errors meant to be read by a user, not debugged."""


class ConfigError(VisionpipeError):
    """A parameter block is invalid."""


class WeightsUnavailable(ConfigError):
    """A library's published weights could not be had (not in the hub cache and no network, or none published)."""


def readable(text: str) -> str:
    """``text`` with the undecodable bytes of non-UTF-8 file names (Python's surrogate escapes) shown as
    ``\\xe9``, so it can be printed, logged and written as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class DataError(VisionpipeError):
    """A data file is missing, unreadable or inconsistent."""

    def __init__(self, path, problem: str, fix: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f". {fix}"
        super().__init__(readable(message))


class TrainingError(VisionpipeError):
    """Training cannot go on (non-finite loss, resume mismatch...)."""
