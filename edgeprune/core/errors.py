"""User-facing errors: one line, a hint, and an exit code. Never a traceback."""

from __future__ import annotations


class EdgepruneError(Exception):
    """A problem with the user's input or environment.

    The CLI prints ``error: <message>`` (plus `` — <hint>``) on one line of stderr and
    exits with ``exit_code`` (2 by default, as for a usage error).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} — {self.hint}"
        return " ".join(text.split())


class MissingRuntimeError(EdgepruneError):
    """A runtime (TensorRT, trtexec, CoreML prediction) is not available here."""


class ParityError(EdgepruneError):
    """An exported artifact does not match PyTorch."""
