"""The local transport: run commands and move files on this machine."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeprune.core.backends.process import DEFAULT_TIMEOUT_S, Result, run_killable


class LocalTransport:
    name = "local"
    where = "this machine"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S):
        self.timeout = timeout  # the limit of a command run with no timeout of its own

    @classmethod
    def from_device(cls, device, timeout: float | None = None, **_options) -> LocalTransport:
        return cls(timeout) if timeout else cls()

    @staticmethod
    def check_device(device) -> str | None:
        return None

    def run(self, argv: list[str], timeout: float | None = None, cwd: str | None = None) -> Result:
        what = shlex.join(argv[:1])
        if cwd:
            argv = ["sh", "-c", f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"]
        return run_killable(argv, timeout or self.timeout, what)

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

    def check(self, timeout: float | None = None) -> None:
        return None

    def reachable(self, timeout: float | None = None) -> tuple[bool, str]:
        return True, "this machine"
