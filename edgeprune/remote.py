"""Profile and bench on another machine over SSH.

Two ways, as the device descriptor says (``remote_runner``):
- ``edgeprune``: the device has edgeprune installed; run ``<remote_python> -m
  edgeprune profile|bench … --here`` in a remote temp dir, copy the JSON back;
- ``trtexec``: the device has only TensorRT (a Jetson with JetPack); the pieces are
  exported here and each is timed there with trtexec (``TrtexecRunner`` over SSH).
The remote temp dir is removed in every case, also on timeout or Ctrl-C.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edgeprune.errors import EdgepruneError, MissingRuntimeError
from edgeprune.latency_table import LatencyTable, load
from edgeprune.profile import ProfileRequest, make_runner, measure
from edgeprune.runtimes.ssh import SSHTransport
from edgeprune.runtimes.timing import Timing


def _policy_args(req_policy, runs: int | None) -> list[str]:
    return ["--runs", str(runs)] if runs else []


def _remote_failed(transport: SSHTransport, python: str, res) -> EdgepruneError:
    text = (res.stderr or res.stdout).strip()
    last = text.splitlines()[-1] if text else f"exit {res.returncode}"
    if res.returncode == 127 or "No module named edgeprune" in text:
        return MissingRuntimeError(
            f"edgeprune is not installed for '{python}' on {transport.host}",
            "pip install edgeprune there, or point --remote-python at a python that has it",
        )
    if last.startswith("error: "):
        last = last[len("error: ") :]
    return EdgepruneError(f"on {transport.host}: {last}", exit_code=2)


def profile_over_ssh(
    req: ProfileRequest,
    transport: SSHTransport,
    runs: int | None = None,
    progress=None,
) -> LatencyTable:
    dev = req.device
    transport.check()
    if dev.remote_runner == "trtexec":
        runner = make_runner(dev, req.threads_used, transport=transport)
        table = measure(req, progress, runner=runner)
        table.device["fingerprint"] = {"id": f"ssh:{transport.host}", "via": "trtexec"}
        table.device["host"] = transport.host
        return table
    python = dev.remote_python
    argv = [python, "-m", "edgeprune", "profile", "--device", dev.name, "--here"]
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
    argv += _policy_args(req.policy, runs)
    if progress:
        progress(f"profiling on {transport.host}", 0, 1)
    with transport.tempdir() as rdir, tempfile.TemporaryDirectory() as ldir:
        res = transport.run([*argv, "--out", f"{rdir}/profile.json"], cwd=rdir)
        if res.returncode != 0:
            raise _remote_failed(transport, python, res)
        local = Path(ldir) / "profile.json"
        transport.get(f"{rdir}/profile.json", local)
        table = load(local)
    table.device["host"] = transport.host
    table.device["transport"] = "ssh"
    if progress:
        progress("done", 1, 1)
    return table


def bench_over_ssh(
    artifact: Path,
    device,
    transport: SSHTransport,
    threads: int | None,
    runs: int | None,
) -> Timing:
    if device.remote_runner == "trtexec":
        from edgeprune.bench import bench_with_runner

        runner = make_runner(device, threads, transport=transport)
        return bench_with_runner(runner, artifact, runs)
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
    try:
        d = json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise EdgepruneError(f"remote bench on {transport.host} printed no JSON") from None
    d.pop("artifact", None)
    d.pop("device", None)
    d.pop("host", None)
    return Timing(**d)
