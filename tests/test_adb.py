"""The adb transport: the real adb client (Debian's ``adb``) for everything that needs no
device, and a STAND-IN ``adb`` (a script: the "device" is a local folder; devices, push,
pull and shell map onto it) for the rest, with a STAND-IN ``executor_runner`` that runs
the .pte in the real ExecuTorch runtime here and logs as ExecuTorch's runner does. The
stand-ins check the plumbing (device choice, temporary folder, cleanup, timeouts, log
parsing, outputs), not a phone."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.transports.adb import AdbTransport
from tests.conftest import need_tool

REAL_ADB = shutil.which("adb")

STAND_IN_ADB = """\
#!{python}
# A STAND-IN for adb (no Android device here): the device is the folder $STANDIN_ROOT,
# its /data/local/tmp is $STANDIN_ROOT/data/local/tmp; $STANDIN_DEVICES lists
# serial:state pairs. devices/push/pull/shell map onto that folder.
import os, shutil, subprocess, sys
root = os.environ["STANDIN_ROOT"]
devs = [d.split(":") for d in os.environ.get("STANDIN_DEVICES", "").split(",") if d]
args = sys.argv[1:]
open(os.path.join(root, "adb.log"), "a").write(" ".join(args) + "\\n")
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
def m(p):
    return p.replace("/data/local/tmp", root + "/data/local/tmp")
if args[0] == "devices":
    print("List of devices attached")
    for s, st in devs:
        print(s + "\\t" + st)
    print()
    sys.exit(0)
if serial is None:
    if not devs:
        sys.exit(print("adb: no devices/emulators found", file=sys.stderr) or 1)
    if len(devs) > 1:
        sys.exit(print("adb: more than one device/emulator", file=sys.stderr) or 1)
    serial = devs[0][0]
if serial not in dict(devs):
    sys.exit(print("adb: device '%s' not found" % serial, file=sys.stderr) or 1)
if args[0] == "push":
    shutil.copyfile(args[1], m(args[2]))
    print(args[1] + ": 1 file pushed")
elif args[0] == "pull":
    if not os.path.exists(m(args[1])):
        sys.exit(print("adb: error: remote object '%s' does not exist" % args[1],
                       file=sys.stderr) or 1)
    shutil.copyfile(m(args[1]), args[2])
elif args[0] == "shell":
    r = subprocess.run(["sh", "-c", m(" ".join(args[1:]))], capture_output=True, text=True)
    sys.stdout.write(r.stdout.replace(root, ""))
    sys.stderr.write(r.stderr.replace(root, ""))
    sys.exit(r.returncode)
"""

STAND_IN_RUNNER = """\
#!{python}
# A STAND-IN for ExecuTorch's executor_runner (no Android device here): runs the .pte in
# the real ExecuTorch runtime of this machine and logs as executor_runner does.
import sys, time
import numpy as np, torch
from executorch.runtime import Runtime
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
method = Runtime.get().load_program(flags["model_path"]).load_method("forward")
shape = method.metadata.input_tensor_meta(0).sizes()
if "inputs" in flags:
    x = torch.from_numpy(np.fromfile(flags["inputs"], dtype=np.float32).reshape(shape))
else:
    x = torch.ones(shape)
n = int(flags.get("num_executions", 1))
total = 0.0
for i in range(n):
    t0 = time.perf_counter()
    out = method.execute([x])
    ms = (time.perf_counter() - t0) * 1e3
    total += ms
    print("I 00:00:00.000 executorch:executor_runner.cpp:1] Iteration %d of %d: %f ms"
          % (i + 1, n, ms), file=sys.stderr)
print("I 00:00:00.000 executorch:executor_runner.cpp:1] Model executed successfully "
      "%d time(s) in %f ms." % (n, total), file=sys.stderr)
if flags.get("output_file"):
    out[0].numpy().astype(np.float32).tofile(flags["output_file"] + "-0.bin")
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def real_adb(monkeypatch):
    """The real adb client on a private server port; its server is stopped afterwards."""
    need_tool("adb")  # missing: skip, or fail under CI=true
    port = str(15037 + os.getpid() % 1000)
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    yield
    subprocess.run([REAL_ADB, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    root = tmp_path / "device"
    (root / "data/local/tmp").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "adb", STAND_IN_ADB)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    monkeypatch.setenv("STANDIN_DEVICES", "SER1:device")
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    return root


# ---- the real adb client, no device -----------------------------------------------------
def test_real_adb_two_at_once_both_start_the_server(real_adb):
    """Two commands that find no adb server start one each; the one that loses the port
    (adb says 'daemon not running ... Address already in use') asks again instead of
    failing with the server's start-up log (as `devices` did, checking two adb devices)."""
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: AdbTransport().devices(), range(4)))
    assert found == [[], [], [], []]


def test_real_adb_no_device_is_one_line(real_adb):
    t = AdbTransport()
    with pytest.raises(EdgepruneError) as e:
        t.check()
    assert "no Android device is attached" in e.value.one_line() and e.value.exit_code == 2
    ok, why = t.reachable()
    assert not ok and "no Android device" in why


def test_real_adb_named_serial_not_attached(real_adb, monkeypatch):
    monkeypatch.setenv("ANDROID_SERIAL", "emulator-5554")
    t = AdbTransport()
    assert t.serial == "emulator-5554"
    with pytest.raises(EdgepruneError, match="emulator-5554 is not attached"):
        t.check()
    assert AdbTransport(serial="R58M12345").serial == "R58M12345"  # --serial wins


def test_no_adb_on_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingRuntimeError) as e:
        AdbTransport()
    assert "'adb' is not on PATH" in e.value.one_line() and "apt-get install adb" in (
        e.value.hint or ""
    )


def test_bad_serial_refused():
    need_tool("adb")
    with pytest.raises(EdgepruneError, match="not an adb serial"):
        AdbTransport(serial="-s x")


# ---- the stand-in device --------------------------------------------------------------
@pytest.mark.parametrize(
    "devices, serial, needle",
    [
        ("SER1:unauthorized", None, "SER1 is unauthorized"),
        ("SER1:device,SER2:device", None, "2 Android devices are attached"),
        ("SER1:offline", None, "SER1 is offline"),
        ("SER1:device", "SER9", "SER9 is not attached"),
    ],
)
def test_device_states_one_line(stand_in, monkeypatch, devices, serial, needle):
    monkeypatch.setenv("STANDIN_DEVICES", devices)
    with pytest.raises(EdgepruneError) as e:
        AdbTransport(serial=serial).check()
    assert needle in e.value.one_line() and "\n" not in e.value.one_line()


def test_push_run_pull_in_a_fresh_folder_removed_afterwards(stand_in, tmp_path):
    t = AdbTransport()
    t.check()
    assert t.serial == "SER1"  # the one attached device
    src = tmp_path / "hello.txt"
    src.write_text("hi")
    with t.tempdir() as d:
        assert d.startswith("/data/local/tmp/edgeprune-")
        remote = t.put(src, d)
        res = t.run(["sh", "-c", "cat hello.txt; echo out > made.txt; exit 3"], cwd=d)
        assert res.returncode == 3 and res.stdout == "hi"  # the remote exit status
        t.get(f"{d}/made.txt", tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_text() == "out\n"
        assert remote == f"{d}/hello.txt"
    assert list((stand_in / "data/local/tmp").iterdir()) == []
    assert "-s SER1 push" in (stand_in / "adb.log").read_text()


def test_timeout_stops_and_cleans(stand_in):
    t = AdbTransport(timeout=1.5)
    with pytest.raises(EdgepruneError, match="did not finish within"), t.tempdir() as d:
        t.run(["sleep", "30"], cwd=d)
    assert list((stand_in / "data/local/tmp").iterdir()) == []


def test_executor_runner_over_adb_times_and_runs(stand_in, tmp_path):
    pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')
    import torch

    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner, make
    from edgeprune.runtimes.timing import TimingPolicy

    torch.manual_seed(0)  # a small program: this checks the plumbing, not the model
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 10)).eval()
    pte = lower(model, torch.zeros(1, 3, 64, 64)).buffer
    _script(stand_in / "data/local/tmp/executor_runner", STAND_IN_RUNNER)
    t = AdbTransport()
    r = make(threads=2, transport=t, executor_runner="/data/local/tmp/executor_runner")
    r.load(pte)
    timing = r.time(TimingPolicy.fixed(6, warmup=2))
    assert timing.runs == 6 and timing.threads == 2 and timing.runtime == "executorch"
    assert timing.extra["where"] == "adb device SER1"
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    here = ExecuTorchRunner()
    here.load(pte)
    (y,) = r.run(x)
    np.testing.assert_allclose(y.reshape(1, -1), here.run(x)[0], atol=1e-5)
    log = (stand_in / "adb.log").read_text()
    assert "--cpu_threads=2" in log and "--num_executions=8" in log
    assert [p.name for p in (stand_in / "data/local/tmp").iterdir()] == ["executor_runner"]

    missing = make(transport=t, executor_runner="/data/local/tmp/nope")
    missing.load(pte)
    with pytest.raises(MissingRuntimeError, match="executor_runner not found"):
        missing.time(TimingPolicy.fixed(1))
