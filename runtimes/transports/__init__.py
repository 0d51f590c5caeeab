"""Transports: where a command runs and how files get there (see ``base.Transport``).

The registry. A new transport is one module defining a class with the ``Transport``
methods plus ``from_device(device, **options)`` and ``check_device(device)``, and one
line below. A device descriptor (``profiles/devices/*.toml``) names its transport with
``transport = "<name>"``.
"""

from __future__ import annotations

import importlib

from edgeprune.core.backends.process import Result, run_killable
from edgeprune.core.errors import EdgepruneError
from edgeprune.runtimes.transports.base import Transport

# name -> "module:Class" (imported when used)
TRANSPORTS: dict[str, str] = {
    "local": "edgeprune.runtimes.transports.local:LocalTransport",
    "ssh": "edgeprune.runtimes.transports.ssh:SSHTransport",
    "adb": "edgeprune.runtimes.transports.adb:AdbTransport",
}


def transport_class(name: str) -> type:
    if name not in TRANSPORTS:
        raise EdgepruneError(
            f"unknown transport '{name}'", f"expected one of: {', '.join(TRANSPORTS)}"
        )
    module, cls = TRANSPORTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_device(device) -> None:
    """Refuse a descriptor whose transport is unknown or misses what it needs."""
    problem = transport_class(device.transport).check_device(device)
    if problem:
        raise EdgepruneError(f"device {device.name}: {problem}")


def open_transport(device, **options) -> Transport:
    """The transport a device descriptor names, opened with command-line ``options``
    (e.g. ``config``/``timeout`` for SSH; a transport ignores what it does not take)."""
    return transport_class(device.transport).from_device(device, **options)


__all__ = [
    "TRANSPORTS",
    "Result",
    "Transport",
    "check_device",
    "open_transport",
    "run_killable",
    "transport_class",
]
