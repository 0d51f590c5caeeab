"""Device descriptors: the TOML files in ``profiles/devices/`` (package data).

A descriptor names the runtime (a name in ``edgeprune.core.backends.runner.RUNTIMES``),
precision and threads a device is measured with, and how to reach it: ``transport``
names a transport of ``edgeprune.runtimes.transports.TRANSPORTS`` (``"local"``, or
``"ssh"`` with a ``host``: an ssh alias or user@addr). On a transport other than
local, ``remote_runner`` says what runs there: ``"edgeprune"`` (``python -m
edgeprune``; ``remote_python`` says which python) or anything else (e.g.
``"trtexec"``): the runtime's own runner, driven from here through the transport
(only for runtimes that shell out, such as TensorRT's trtexec). Keys the dataclass
does not name land in ``options`` (a runtime reads the ones it declares).
"""

from __future__ import annotations

import os
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Annotated

from pydantic import Field

from edgeprune.core.backends.runner import RUNTIMES
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.records import record
from edgeprune.core.schema import Strict, validate
from edgeprune.runtimes.base import runtime_here
from edgeprune.runtimes.transports import TRANSPORTS, check_device, open_transport

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Device:
    name: str
    runtime: str
    precision: str = "fp32"
    threads: int = 0
    transport: str = "local"
    host: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    remote_runner: str = "edgeprune"
    remote_python: str = "python3"
    trtexec: str | None = None
    compute_units: str = "ALL"
    options: dict = field(default_factory=dict)

    def resolved_threads(self) -> int:
        """The real thread count to use and record (0 means every usable core)."""
        if self.threads > 0:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # macOS
            return os.cpu_count() or 1

    def at_host(self, host: str | None, remote_python: str | None = None) -> Device:
        """This device reached over SSH at ``host`` (``--host`` on the command line)."""
        if host is None:
            return self if remote_python is None else replace(self, remote_python=remote_python)
        return replace(
            self,
            transport="ssh",
            host=host,
            remote_python=remote_python or self.remote_python,
        )

    def here(self) -> Device:
        """This device measured on this machine (the remote end of an SSH profile)."""
        return replace(self, transport="local", host=None)

    def to_dict(self) -> dict:
        return record(self, "name runtime precision threads transport host")


Name = Annotated[str, Field(min_length=1, max_length=200)]


class DeviceFile(Strict):
    """A device descriptor (TOML): ``Device``'s fields, and the options runtimes and
    transports read (others are kept in ``options`` unchecked)."""

    name: Name
    runtime: Name
    precision: str = "fp32"
    threads: Annotated[int, Field(ge=0, le=4096)] = 0
    transport: str = "local"
    host: Name | None = None
    description: str = ""
    aliases: Annotated[list[Name], Field(max_length=100)] = []
    remote_runner: Name = "edgeprune"
    remote_python: Name = "python3"
    trtexec: Name | None = None
    compute_units: str = "ALL"
    # options (runtimes' device_options, transports' from_device)
    serial: str | None = None
    executor_runner: Name | None = None
    ort_perf_test: Name | None = None
    custom_kernels: bool | None = None


def _from_toml(text: str, origin: str) -> Device:
    try:
        d = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise EdgepruneError(
            f"device descriptor {origin} is not valid TOML ({e.__class__.__name__}: {e})"
        ) from None
    validate(DeviceFile, d, f"device descriptor {origin} is not valid")
    known = {f for f in Device.__dataclass_fields__ if f != "options"}
    kwargs = {k: v for k, v in d.items() if k in known}
    kwargs["options"] = {k: v for k, v in d.items() if k not in known}
    kwargs["aliases"] = tuple(kwargs.get("aliases", ()))
    dev = Device(**kwargs)

    if dev.runtime not in RUNTIMES:
        raise EdgepruneError(f"device {dev.name}: unknown runtime '{dev.runtime}'")
    if dev.transport not in TRANSPORTS:
        raise EdgepruneError(f"device {dev.name}: unknown transport '{dev.transport}'")
    if dev.precision not in PRECISIONS:
        raise EdgepruneError(f"device {dev.name}: unknown precision '{dev.precision}'")
    check_device(dev)
    return dev


def all_devices() -> dict[str, Device]:
    out: dict[str, Device] = {}
    folder = resources.files("edgeprune.profiles") / "devices"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            dev = _from_toml(entry.read_text(), f"profiles/devices/{entry.name}")
            out[dev.name] = dev
    return out


def get_device(name: str) -> Device:
    devs = all_devices()
    if name in devs:
        return devs[name]
    for dev in devs.values():
        if name in dev.aliases:
            return dev
    names = sorted(list(devs) + [a for d in devs.values() for a in d.aliases])
    raise EdgepruneError(
        f"unknown device '{name}'", f"known devices: {', '.join(names)} (see 'edgeprune devices')"
    )


def device_for(
    name: str, host: str | None = None, remote_python: str | None = None, here: bool = False
) -> Device:
    """The device ``name`` as the command line asks for it: at ``--host`` (over SSH),
    with ``--remote-python``, or (``--here``) measured on this machine."""
    dev = get_device(name).at_host(host, remote_python)
    return dev.here() if here else dev


def reachability(dev: Device, timeout: float = 4.0) -> tuple[bool, str]:
    """Quick check: the runtime runs here (local), or the transport answers within
    ``timeout``."""

    if dev.transport == "local":
        return runtime_here(dev)
    try:
        t = open_transport(dev, connect_timeout=max(1, int(timeout) - 1))
    except EdgepruneError as e:
        return False, e.message
    return t.reachable(timeout=timeout)


def reachability_all(devs: list[Device], timeout: float = 4.0) -> list[tuple[bool, str]]:
    """``reachability`` for every device at once (in threads: one slow host does not
    hold the others up)."""

    with ThreadPoolExecutor(max_workers=max(1, len(devs))) as pool:
        return list(pool.map(lambda d: reachability(d, timeout), devs))


def device_rows(timeout: float = 4.0) -> list[dict]:
    """Every descriptor with its aliases and whether it can be reached from here."""
    devs = list(all_devices().values())
    checks = reachability_all(devs, timeout)
    return [
        {**d.to_dict(), "aliases": list(d.aliases), "reachable": ok, "why": why}
        for d, (ok, why) in zip(devs, checks, strict=True)
    ]
