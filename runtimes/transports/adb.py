"""The adb transport: an Android device reached with the Android Debug Bridge.

The device is chosen by ``serial`` (``--serial``, else ``$ANDROID_SERIAL``, else the
descriptor's ``serial``); with no serial exactly one device must be attached. Files go
to a fresh ``/data/local/tmp/edgeprune-XXXXXXXX`` (``mktemp -d`` on the device), which is
removed afterwards, also on Ctrl-C and when ``timeout`` expires (the remote command is
then stopped too: it runs under toybox ``timeout`` and its pid is kept in the folder).
``adb shell`` returns the remote exit status (Android 7 and newer).

Same interface as the local and SSH transports (``run``, ``put``, ``get``, ``tempdir``,
``which``, ``check``, ``reachable``), so a runner that shells out does not care where
it runs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeprune.core.backends.process import Result, run_killable
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.transports.base import RemoteShell

SERIAL_ENV = "ANDROID_SERIAL"
REMOTE_ROOT = "/data/local/tmp"


@dataclass
class AdbTransport(RemoteShell):
    serial: str | None = None
    timeout: float = 600.0  # overall limit for one remote command
    connect_timeout: float = 10.0  # limit for the quick adb calls (devices, mktemp, rm)
    adb: str = "adb"
    name: str = "adb"

    def __post_init__(self) -> None:
        if self.serial is None:
            self.serial = os.environ.get(SERIAL_ENV) or None
        if self.serial is not None and (
            not self.serial or self.serial.startswith("-") or any(c.isspace() for c in self.serial)
        ):
            raise EdgepruneError(f"'{self.serial}' is not an adb serial", "see 'adb devices'")
        if shutil.which(self.adb) is None:
            raise MissingRuntimeError(
                f"'{self.adb}' is not on PATH",
                "install Android's platform tools (Debian/Ubuntu: apt-get install adb)",
            )

    # ---- registry hooks ---------------------------------------------------------------
    @classmethod
    def from_device(cls, device, **options) -> AdbTransport:
        serial = options.get("serial") or os.environ.get(SERIAL_ENV)
        serial = serial or getattr(device, "options", {}).get("serial")
        kw = {"serial": serial}
        if options.get("timeout"):
            kw["timeout"] = float(options["timeout"])
        if options.get("connect_timeout"):
            kw["connect_timeout"] = float(options["connect_timeout"])
        return cls(**kw)

    @staticmethod
    def check_device(device) -> str | None:
        return None  # a serial is optional: one attached device is enough

    @property
    def where(self) -> str:
        return f"adb device {self.serial}" if self.serial else "the adb device"

    # ---- primitives -------------------------------------------------------------------
    def _base(self) -> list[str]:
        return [self.adb, "-s", self.serial] if self.serial else [self.adb]

    def _adb(self, args: list[str], timeout: float | None, what: str) -> Result:
        return run_killable([*self._base(), *args], timeout, what)

    def devices(self) -> list[tuple[str, str]]:
        """``adb devices``: (serial, state) of every attached device."""
        res = run_killable([self.adb, "devices"], self.connect_timeout, "adb devices")
        for _ in range(4):
            if res.returncode == 0 or "daemon not running" not in (res.stderr or ""):
                break
            # two commands started the adb server at once and this one lost the port:
            # the other one's server answers once it is up
            time.sleep(0.5)
            res = run_killable([self.adb, "devices"], self.connect_timeout, "adb devices")
        if res.returncode != 0:
            raise EdgepruneError(f"adb devices failed: {_last(res)}")
        out = []
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith(("List of", "*")):
                out.append((parts[0], parts[1]))
        return out

    def check(self, timeout: float | None = None) -> None:
        """Exactly the device asked for is attached and authorized; one clear line if not."""
        devs = self.devices()
        if self.serial is None:
            if not devs:
                raise EdgepruneError(
                    "no Android device is attached (adb devices lists none)",
                    "connect one with USB debugging on, or 'adb connect HOST:PORT'",
                )
            if len(devs) > 1:
                names = ", ".join(s for s, _ in devs)
                raise EdgepruneError(
                    f"{len(devs)} Android devices are attached ({names})",
                    f"choose one with --serial or {SERIAL_ENV}",
                )
            self.serial = devs[0][0]
        states = dict(devs)
        state = states.get(self.serial)
        if state is None:
            raise EdgepruneError(
                f"Android device {self.serial} is not attached",
                f"attached: {', '.join(states) or 'none'} (see 'adb devices')",
            )
        if state == "unauthorized":
            raise EdgepruneError(
                f"Android device {self.serial} is unauthorized",
                "accept the USB debugging prompt on the phone, then retry",
            )
        if state != "device":
            raise EdgepruneError(f"Android device {self.serial} is {state}, not ready")
        res = self._adb(["shell", "true"], timeout or self.connect_timeout, "adb shell")
        if res.returncode != 0:
            raise EdgepruneError(f"adb shell on {self.serial} failed: {_last(res)}")

    # ---- RemoteShell hooks: run() and reachable() come from there -----------------------
    backstop_codes = (124, 137, 143)  # toybox timeout ends the command with SIGTERM

    @property
    def cleanup_timeout(self) -> float:
        return self.connect_timeout

    def _shell(self, cmd: str, timeout: float | None, what: str | None = None) -> Result:
        label = f"adb {what}" if what else f"adb shell on {self.where}"
        return self._adb(["shell", cmd], timeout, label)

    def _backstop(self, limit: float) -> str:
        return f"timeout {int(limit) + 5}"

    def _refuse(self, res: Result) -> None:
        if _device_gone(res):
            raise EdgepruneError(f"lost the Android device: {_last(res)}")

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[str]:
        res = self._adb(
            ["shell", f"mktemp -d {REMOTE_ROOT}/edgeprune-XXXXXXXX"],
            self.connect_timeout + 5,
            "adb shell mktemp",
        )
        d = res.stdout.strip()
        if res.returncode != 0 or not d.startswith(f"{REMOTE_ROOT}/edgeprune-"):
            raise EdgepruneError(
                f"could not make a temporary directory on {self.where}: {_last(res)}"
            )
        try:
            yield d
        finally:
            with contextlib.suppress(BaseException):
                self._adb(["shell", f"rm -rf {shlex.quote(d)}"], self.connect_timeout, "adb rm")

    def put(self, local: Path, remote_dir: str) -> str:
        dest = f"{remote_dir}/{Path(local).name}"
        res = self._adb(["push", str(local), dest], self.timeout, f"adb push to {self.where}")
        if res.returncode != 0:
            raise EdgepruneError(f"adb push {local} -> {dest} failed: {_last(res)}")
        return dest

    def get(self, remote: str, local: Path) -> None:
        res = self._adb(["pull", remote, str(local)], self.timeout, f"adb pull from {self.where}")
        if res.returncode != 0:
            raise EdgepruneError(f"adb pull {remote} failed: {_last(res)}")

    def which(self, program: str) -> str | None:
        res = self._adb(
            ["shell", f"command -v {shlex.quote(program)}"], self.connect_timeout, "adb shell"
        )
        return (res.stdout.strip() or None) if res.returncode == 0 else None


def _last(res: Result) -> str:
    text = " ".join((res.stderr or res.stdout or "").split())
    return text[:200] or f"exit {res.returncode}"


def _device_gone(res: Result) -> bool:
    low = (res.stderr or "").lower()
    gone = ("device offline", "no devices/emulators found", "device not found")
    return res.returncode != 0 and any(g in low for g in gone)
