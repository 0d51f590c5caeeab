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
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeprune.core.backends.process import Result, timed_out
from edgeprune.core.errors import EdgepruneError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


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


class RemoteShell:
    """What the transports that reach another machine through a shell (SSH, adb) share:
    ``run`` under the overall timeout, the far side under its own ``timeout`` backstop in
    ``cwd`` (its pid kept there), so a lost connection cannot leave it running, and
    ``reachable`` from ``check``. Subclasses give ``_shell`` (one remote shell command),
    ``_backstop`` (the far side's ``timeout`` command) and ``cleanup_timeout``."""

    timeout: float
    backstop_codes: tuple[int, ...] = (124, 137)  # exit statuses of a fired backstop

    @property
    def where(self) -> str:
        raise NotImplementedError

    @property
    def cleanup_timeout(self) -> float:
        raise NotImplementedError

    def check(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def _shell(self, cmd: str, timeout: float | None, what: str | None = None) -> Result:
        raise NotImplementedError

    def _backstop(self, limit: float) -> str:
        raise NotImplementedError

    def _refuse(self, res: Result) -> None:
        """Raise when ``res`` says the machine itself was lost (not the command failing)."""

    def reachable(self, timeout: float | None = None) -> tuple[bool, str]:
        try:
            self.check(timeout)
        except EdgepruneError as e:
            return False, e.message
        return True, "ok"

    def run(self, argv: list[str], timeout: float | None = None, cwd: str | None = None) -> Result:
        """Run ``argv`` there (in ``cwd``) under the overall timeout; with ``cwd`` the far
        side runs under the backstop too and is stopped (its folder removed) on failure."""
        limit = timeout or self.timeout
        cmd = shlex.join(argv)
        if cwd:
            q = shlex.quote(cwd)
            cmd = f"cd {q} && echo $$ > .edgeprune.pid && exec {self._backstop(limit)} {cmd}"
        try:
            res = self._shell(cmd, limit)
        except BaseException:
            if cwd:
                self._stop_and_clean(cwd)
            raise
        self._refuse(res)
        if cwd and res.returncode in self.backstop_codes:
            self._stop_and_clean(cwd)
            raise timed_out(f"the command on {self.where}", limit)
        return res

    def _stop_and_clean(self, remote_dir: str) -> None:
        q = shlex.quote(remote_dir)
        with contextlib.suppress(BaseException):
            self._shell(
                f"kill -TERM $(cat {q}/.edgeprune.pid 2>/dev/null) 2>/dev/null; rm -rf {q}",
                self.cleanup_timeout,
                "cleanup",
            )
