"""TensorRT's ``trtexec``: where it is and which TensorRT it is (one probe, used by
the timing runner in ``runner.py`` and the engine builder in ``engine.py``),
on this machine or through any transport."""

from __future__ import annotations

import re

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.transports.local import LocalTransport

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def _local():
    return LocalTransport()


def find_trtexec(transport=None) -> str:
    """trtexec on the transport's PATH, else where JetPack puts it."""
    transport = transport or _local()
    for cand in ("trtexec", JETPACK_TRTEXEC):
        found = transport.which(cand)
        if found:
            return found
    raise MissingRuntimeError(
        f"TensorRT is not available on {transport.where}: no trtexec on PATH "
        f"(nor {JETPACK_TRTEXEC})"
        + (" and no 'tensorrt' Python package" if transport.name == "local" else ""),
        "on a Jetson it comes with JetPack; elsewhere install TensorRT from NVIDIA, "
        "or profile the device over SSH with --host",
    )


def parse_trtexec_version(text: str) -> tuple[int, int, int] | None:
    """TensorRT version from trtexec's banner: ``[TensorRT v100300]`` is 10.3.0
    (8.x wrote ``v8601`` for 8.6.1)."""
    m = re.search(r"TensorRT v([0-9]{1,9})\b", text)
    if m:
        n = int(m.group(1))
        if n >= 100000:  # 10.x and later: MMmmpp
            return n // 10000, (n // 100) % 100, n % 100
        return n // 1000, (n // 100) % 10, n % 100
    m = re.search(r"TensorRT version:?\s*([0-9]{1,6})\.([0-9]{1,6})\.([0-9]{1,6})\b", text)
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return None


def probe_version(trtexec: str, transport=None) -> tuple[int, int, int] | None:
    """Run ``trtexec --help`` (here or through ``transport``) and read its version;
    None when it cannot be run or says none."""
    transport = transport or _local()
    try:
        res = transport.run([trtexec, "--help"], timeout=60)
    except (OSError, EdgepruneError):
        return None
    return parse_trtexec_version(res.stdout + res.stderr)
