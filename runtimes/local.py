"""The local transport: run commands and move files on this machine.

Same interface as ``edgeprune.runtimes.ssh.SSHTransport`` so that a runner that
shells out (trtexec, a remote edgeprune) does not care where it runs.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


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
        raise EdgepruneError(
            f"{what} did not finish within {timeout:g} s and was stopped",
            "raise --timeout, or check that the device is not stuck",
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    return Result(proc.returncode, out, errs)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        import os

        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=5)


class LocalTransport:
    name = "local"
    where = "this machine"

    def run(self, argv: list[str], timeout: float | None = None, cwd: str | None = None) -> Result:
        if cwd:
            argv = ["sh", "-c", f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"]
        return run_killable(argv, timeout, shlex.join(argv[:1]))

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[str]:
        d = tempfile.mkdtemp(prefix="edgeprune-")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def put(self, local: Path, remote_dir: str) -> str:
        dest = Path(remote_dir) / Path(local).name
        shutil.copyfile(local, dest)
        return str(dest)

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def which(self, program: str) -> str | None:
        return shutil.which(program)
