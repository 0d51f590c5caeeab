"""The SSH transport, through the system's OpenSSH client (``ssh``/``scp``).

The user's ``~/.ssh/config``, agent and known_hosts apply. Host keys are checked
and never accepted automatically (``StrictHostKeyChecking=yes``), nothing prompts
(``BatchMode=yes``), connecting gives up after ``connect_timeout`` seconds, and
every remote command runs under an overall timeout: on expiry the local client is
killed, the remote process is stopped and the remote temporary directory removed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.core.backends.process import Result, run_killable
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.transports.base import RemoteShell

SSH_CONFIG_ENV = "EDGEPRUNE_SSH_CONFIG"


@dataclass
class SSHTransport(RemoteShell):
    host: str  # user@addr, addr, or a Host alias from the ssh config
    config: str | None = None  # -F FILE (default: $EDGEPRUNE_SSH_CONFIG, else ssh's own)
    connect_timeout: int = 5
    timeout: float = 600.0  # overall limit for one remote command
    extra_options: list[str] = field(default_factory=list)
    name: str = "ssh"

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = os.environ.get(SSH_CONFIG_ENV) or None
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise EdgepruneError(f"'{self.host}' is not an SSH host", "give user@addr or an alias")
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise MissingRuntimeError(
                    f"'{tool}' is not on PATH", "install the OpenSSH client (openssh-client)"
                )

    @property
    def where(self) -> str:
        return self.host

    @classmethod
    def from_device(cls, device, config: str | None = None, **options) -> SSHTransport:
        """The descriptor's ``host``; ``config`` (-F), ``timeout`` and ``connect_timeout``
        from the command line (other options are for other transports)."""
        kw = {k: v for k, v in options.items() if k in ("timeout", "connect_timeout") and v}
        return cls(device.host or "", config=config, **kw)

    @staticmethod
    def check_device(device) -> str | None:
        return None if device.host else "transport ssh needs a host"

    def _options(self) -> list[str]:
        opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={int(self.connect_timeout)}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.config:
            opts = ["-F", self.config, *opts]
        return opts + list(self.extra_options)

    # ---- primitives -----------------------------------------------------------------
    def _ssh(self, remote_cmd: str, timeout: float | None) -> Result:
        argv = ["ssh", *self._options(), self.host, remote_cmd]
        res = run_killable(argv, timeout, f"ssh {self.host}")
        if res.returncode == 255:
            raise ssh_error(self.host, res.stderr)
        return res

    def check(self, timeout: float | None = None) -> None:
        """Connect and run ``true``; raises one clear error when that fails."""
        self._ssh("true", timeout or self.connect_timeout + 5)

    # ---- RemoteShell hooks: run() and reachable() come from there -----------------------
    @property
    def cleanup_timeout(self) -> float:
        return self.connect_timeout + 10

    def _shell(self, cmd: str, timeout: float | None, what: str | None = None) -> Result:
        return self._ssh(cmd, timeout)

    def _backstop(self, limit: float) -> str:
        # outlives the local limit, so the local one fires first
        return f"timeout -k 5 {int(limit + self.connect_timeout) + 5}"

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[str]:
        res = self._ssh("mktemp -d /tmp/edgeprune-XXXXXXXX", self.connect_timeout + 15)
        d = res.stdout.strip()
        if res.returncode != 0 or not d.startswith("/tmp/edgeprune-"):
            raise EdgepruneError(
                f"could not make a temporary directory on {self.host}: {res.stderr.strip()[:200]}"
            )
        try:
            yield d
        finally:
            q = shlex.quote(d)
            with contextlib.suppress(BaseException):
                self._ssh(f"rm -rf {q}", self.connect_timeout + 15)

    def _scp(self, src: str, dst: str) -> None:
        argv = ["scp", "-q", "-p", *self._options(), src, dst]
        res = run_killable(argv, self.timeout, f"scp to/from {self.host}")
        if res.returncode != 0:
            if "Host key verification failed" in res.stderr or "Connection" in res.stderr:
                raise ssh_error(self.host, res.stderr)
            raise EdgepruneError(
                f"copying {src} -> {dst} failed: {' '.join(res.stderr.split())[:200]}"
            )

    def put(self, local: Path, remote_dir: str) -> str:
        dest = f"{remote_dir}/{Path(local).name}"
        self._scp(str(local), f"{self.host}:{shlex.quote(dest)}")
        return dest

    def get(self, remote: str, local: Path) -> None:
        self._scp(f"{self.host}:{shlex.quote(remote)}", str(local))

    def which(self, program: str) -> str | None:
        res = self._ssh(f"command -v {shlex.quote(program)}", self.connect_timeout + 15)
        return (res.stdout.strip() or None) if res.returncode == 0 else None


def ssh_error(host: str, stderr: str) -> EdgepruneError:
    """One clear line for the ways ``ssh`` fails before the remote command runs."""
    text = " ".join(stderr.split())
    low = text.lower()
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return EdgepruneError(
            f"host key verification failed for {host}: its key is unknown or does not "
            "match known_hosts",
            "check the device's key and add it with ssh-keyscan/ssh once by hand; "
            "edgeprune never accepts host keys automatically",
        )
    if "connection refused" in low:
        return EdgepruneError(
            f"cannot reach {host}: connection refused", "is sshd running on the device?"
        )
    if "timed out" in low or "no route to host" in low or "network is unreachable" in low:
        return EdgepruneError(f"cannot reach {host}: {text[:160]}", "is the device on and online?")
    if "could not resolve" in low or "name or service not known" in low:
        return EdgepruneError(
            f"cannot reach {host}: unknown host name",
            "give --host user@addr or add a Host entry to your ssh config",
        )
    if "permission denied" in low:
        return EdgepruneError(
            f"ssh to {host} was refused: permission denied",
            "load your key into ssh-agent or set IdentityFile in your ssh config",
        )
    return EdgepruneError(f"ssh to {host} failed: {text[:200] or 'exit 255'}")
