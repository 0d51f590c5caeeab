"""The one interface every transport offers: run a command, move files, a temporary
directory, all on some machine (this one, an SSH host, next an Android phone over adb).

A runner that shells out (trtexec, a remote ``python -m edgeprune``) takes any
transport and does not care where it runs::

    with transport.tempdir() as rdir:            # removed afterwards, also on Ctrl-C
        remote = transport.put(local_file, rdir)  # push
        res = transport.run([tool, remote], cwd=rdir, timeout=600)
        transport.get(f"{rdir}/out.json", local_out)  # pull

Heavy or optional tools are looked up when used, never at import.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


@dataclass
class Result:
    """What a command run through a transport gave back."""

    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """Where a command runs. ``name`` is the registry key (``local``, ``ssh``, …),
    ``where`` a human-readable place for messages (``this machine``, ``me@jetson``)."""

    name: str

    @property
    def where(self) -> str: ...

    def run(
        self, argv: list[str], timeout: float | None = None, cwd: str | None = None
    ) -> Result: ...

    def put(self, local: Path, remote_dir: str) -> str: ...  # push; returns the remote path

    def get(self, remote: str, local: Path) -> None: ...  # pull

    def tempdir(self) -> AbstractContextManager[str]: ...  # made, then removed (cleanup)

    def which(self, program: str) -> str | None: ...

    def check(self, timeout: float | None = None) -> None: ...  # raises when unreachable

    def reachable(self, timeout: float | None = None) -> tuple[bool, str]: ...


def timed_out(what: str, limit: float | None) -> EdgepruneError:
    """The one error for a command stopped at its time limit, here or on a device."""
    return EdgepruneError(
        f"{what} did not finish within {limit:g} s and was stopped",
        "raise --timeout, or check that the device is not stuck",
    )


def run_killable(argv: list[str], timeout: float | None, what: str) -> Result:
    """Run ``argv`` in its own process group; on timeout or Ctrl-C kill the whole group."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, errs = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise timed_out(what, timeout) from None
    except BaseException:
        _kill_group(proc)
        raise
    return Result(proc.returncode, out, errs)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=5)
