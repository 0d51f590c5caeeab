"""Run a tool on this machine in its own process group, killed (the whole group) on timeout
or Ctrl-C: the one way edgeprune starts a local process, for the transports (a command
through ``local``, ``ssh``, ``adb``), the ExecuTorch kernel compiler and trtexec's probes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass

from edgeprune.core.errors import EdgepruneError


@dataclass(kw_only=True)
class Result:
    """What a command run (here or through a transport) gave back."""

    returncode: int
    stdout: str
    stderr: str


# the limit of a command run with no timeout of its own: nothing edgeprune starts runs
# unbounded (a hanging tool, device or connection ends in one line)
DEFAULT_TIMEOUT_S = 600.0


def timed_out(what: str, limit: float | None, hint: str | None = None) -> EdgepruneError:
    """The one error for a command stopped at its time limit, here or on a device."""
    return EdgepruneError(
        f"{what} did not finish within {limit:g} s and was stopped",
        hint or "raise --timeout, or check that the device is not stuck",
    )


def run_killable(
    argv: list[str], timeout: float | None, what: str, hint: str | None = None
) -> Result:
    """Run ``argv`` in its own process group; on timeout or Ctrl-C kill the whole group.
    ``timeout`` None: ``DEFAULT_TIMEOUT_S``; ``hint``: what the timeout's line suggests."""
    timeout = timeout or DEFAULT_TIMEOUT_S
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as e:  # not there, not executable
        raise EdgepruneError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    try:
        out, errs = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise timed_out(what, timeout, hint) from None
    except BaseException:
        _kill_group(proc)
        raise
    return Result(returncode=proc.returncode, stdout=out, stderr=errs)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=5)
