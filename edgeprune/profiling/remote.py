"""Profile and bench with edgeprune installed on the far side of a transport.

For a device whose descriptor says ``remote_runner = "edgeprune"``: run
``<remote_python> -m edgeprune profile|bench … --here`` in a temporary directory
there and copy the JSON back. The temporary directory is removed in every case, also
on timeout or Ctrl-C. (A device with only its runtime's own tool, e.g. trtexec on a
Jetson, is driven from here instead: see ``profiling.measure`` and ``profiling.bench``.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.schema import loads
from edgeprune.latency.table import LatencyTable, load
from edgeprune.runtimes.timing import Timing

if TYPE_CHECKING:
    from edgeprune.profiling.sweep import ProfileRequest
    from edgeprune.runtimes.transports import Transport


def _remote_failed(transport: Transport, python: str, res) -> EdgepruneError:
    text = (res.stderr or res.stdout).strip()
    last = text.splitlines()[-1] if text else f"exit {res.returncode}"
    if res.returncode == 127 or "No module named edgeprune" in text:
        return MissingRuntimeError(
            f"edgeprune is not installed for '{python}' on {transport.where}",
            "pip install edgeprune there, or point --remote-python at a python that has it",
        )
    if last.startswith("error: "):
        last = last[len("error: ") :]
    return EdgepruneError(f"on {transport.where}: {last}", exit_code=2)


def _profile_argv(req: ProfileRequest, runs: int | None) -> list[str]:
    dev = req.device
    argv = [dev.remote_python, "-m", "edgeprune", "profile", "--device", dev.name, "--here"]
    argv += ["--arch", req.arch.name, "--batch", str(req.batch), "--no-plot"]
    argv += ["--check-points", str(req.check_points)]
    if req.method:
        argv += ["--method", req.method]
    if req.threads:
        argv += ["--threads", str(req.threads)]
    if req.grid:
        argv += ["--grid", ",".join(map(str, req.grid))]
    if not req.halves:
        argv += ["--no-halves"]
    if not req.e2e:
        argv += ["--no-e2e"]
    argv += ["--chain", str(req.chain)]
    return argv + (["--runs", str(runs)] if runs else [])


def profile_remote(
    req: ProfileRequest, transport: Transport, runs: int | None = None, progress=None
) -> LatencyTable:
    """The latency table measured by edgeprune on the far side of ``transport``."""
    transport.check()
    argv = _profile_argv(req, runs)
    if progress:
        progress(f"profiling on {transport.where}", 0, 1)
    with transport.tempdir() as rdir, tempfile.TemporaryDirectory() as ldir:
        res = transport.run([*argv, "--out", f"{rdir}/profile.json"], cwd=rdir)
        if res.returncode != 0:
            raise _remote_failed(transport, req.device.remote_python, res)
        local = Path(ldir) / "profile.json"
        transport.get(f"{rdir}/profile.json", local)
        table = load(local)
    table.device["host"] = transport.where
    table.device["transport"] = transport.name
    if progress:
        progress("done", 1, 1)
    return table


def bench_remote(
    artifact: Path, device, transport: Transport, threads: int | None, runs: int | None
) -> Timing:
    """``edgeprune bench`` run by edgeprune on the far side of ``transport``."""
    transport.check()
    python = device.remote_python
    with transport.tempdir() as rdir:
        remote = transport.put(Path(artifact), rdir)
        argv = [python, "-m", "edgeprune", "bench", remote, "--device", device.name, "--here"]
        argv += ["--json"]
        if threads:
            argv += ["--threads", str(threads)]
        if runs:
            argv += ["--runs", str(runs)]
        res = transport.run(argv, cwd=rdir)
        if res.returncode != 0:
            raise _remote_failed(transport, python, res)
    return remote_timing(res.stdout, transport.where)


def remote_timing(stdout: str, where: str) -> Timing:
    """The Timing in the last line of ``edgeprune bench --json`` run on ``where``:
    JSON (no NaN/Infinity), every field checked (``Timing.from_dict``), one line if not."""

    lines = stdout.strip().splitlines()
    if not lines:
        raise EdgepruneError(f"remote bench on {where} printed no JSON")
    d = loads(lines[-1], f"remote bench on {where} printed no JSON")
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k not in ("artifact", "device", "host")}
    hint = "is edgeprune there the same version as here?"
    return Timing.from_dict(d, f"remote bench on {where} printed a bad timing", hint)
