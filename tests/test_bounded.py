"""Bounded everything (issue 33): every external process edgeprune starts has a time
limit and ends in one line when it is reached (the kernel compiler included), and the
options that set a limit or a wait take only finite values in range (``--timeout 0``
once meant "no value" and waited the 600 s default)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeprune.core.errors import EdgepruneError
from tests.conftest import need_tool


def _gone(pid: int) -> bool:
    """The process ``pid`` has ended (a zombie nobody reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(ln.split()[1:2] == ["Z"] for ln in f if ln.startswith("State:"))
    except FileNotFoundError:
        return True


def _wait_gone(pid: int) -> bool:
    for _ in range(50):
        if _gone(pid):
            return True
        time.sleep(0.1)
    return False


def _hanging(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A script that starts a child which sleeps 20 s (its pid written to a file) and
    waits for it: a tool that hangs."""
    pidfile = tmp_path / f"{name}.pid"
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\nsleep 20 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    return script, pidfile


# ---- the kernel compiler --------------------------------------------------------------
def test_a_hanging_compiler_is_stopped_in_one_line(tmp_path, monkeypatch):
    """CXX hangs: the build stops at $EDGEPRUNE_CXX_TIMEOUT, kills the compiler and
    everything it started, and leaves nothing in the cache."""
    pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')
    from edgeprune.core.backends import executorch_kernels as k

    cxx, pidfile = _hanging(tmp_path, "slow-cxx")
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("EDGEPRUNE_CXX_TIMEOUT", "1")
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EdgepruneError) as e:
        k.build()
    line = e.value.one_line()
    assert "did not finish within 1 s" in line and "EDGEPRUNE_CXX_TIMEOUT" in line, line
    assert _wait_gone(int(pidfile.read_text())), "the compiler's child still runs"
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e400", "soon", "2e6"])
def test_the_compiler_timeout_takes_seconds_only(value, tmp_path, monkeypatch):
    pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')
    from edgeprune.core.backends import executorch_kernels as k

    monkeypatch.setenv("EDGEPRUNE_CXX_TIMEOUT", value)
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    need_tool("g++")
    with pytest.raises(EdgepruneError) as e:
        k.build()
    assert f"EDGEPRUNE_CXX_TIMEOUT={value} is not a number of seconds" in e.value.one_line()


# ---- commands run through a transport ---------------------------------------------------
def test_local_commands_are_bounded(tmp_path, monkeypatch):
    """The local transport has a limit of its own (--timeout reaches it), and a command
    run with no limit at all gets the default one."""
    from edgeprune.core.backends import process
    from edgeprune.profiles.devices import get_device
    from edgeprune.runtimes.transports import open_transport
    from edgeprune.runtimes.transports.local import LocalTransport

    script, pidfile = _hanging(tmp_path, "tool")
    t = open_transport(get_device("cpu"), timeout=1.0)
    assert isinstance(t, LocalTransport) and t.timeout == 1.0
    with pytest.raises(EdgepruneError, match=r"did not finish within 1 s and was stopped"):
        t.run([str(script)], cwd=str(tmp_path))
    assert _wait_gone(int(pidfile.read_text()))
    assert LocalTransport().timeout == process.DEFAULT_TIMEOUT_S
    monkeypatch.setattr(process, "DEFAULT_TIMEOUT_S", 1.0)
    with pytest.raises(EdgepruneError, match="did not finish within 1 s"):
        process.run_killable([str(script)], None, "the tool")
    assert _wait_gone(int(pidfile.read_text()))


def test_a_missing_tool_is_one_line(tmp_path):
    from edgeprune.core.backends.process import run_killable

    with pytest.raises(EdgepruneError, match="cannot run .*no-such-tool"):
        run_killable([str(tmp_path / "no-such-tool")], 5, "the tool")


# ---- limits and waits on the command line -----------------------------------------------
LIMITS = ["0", "-1", "nan", "inf", "-inf", "1e400", "2e6"]
WAITS = ["-1", "nan", "inf", "1e400", "2e6"]


def _refused(cli, *args: str) -> str:
    code, out, err = cli(*args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == "", (args, code, out)
    assert len(lines) == 1 and lines[0].startswith("error:"), (args, err)
    return lines[0]


@pytest.mark.parametrize("value", LIMITS)
def test_time_limits_take_positive_finite_seconds(cli, tmp_path, value):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"not read: the option is refused first")
    for args in (
        ["profile", "--device", "cpu", f"--timeout={value}"],
        ["bench", str(art), f"--timeout={value}"],
        ["bench", str(art), f"--max-time={value}"],
        ["devices", f"--timeout={value}"],
    ):
        line = _refused(cli, *args)
        assert "is not a time limit" in line and args[-1].split("=")[0] in line, line


@pytest.mark.parametrize("value", WAITS)
def test_waits_take_finite_seconds_from_zero(cli, tmp_path, value):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"not read")
    for args in (
        ["bench", str(art), f"--cooldown={value}"],
        ["bench", str(art), f"--wait-quiet={value}"],
    ):
        line = _refused(cli, *args)
        assert "is not a wait" in line and args[-1].split("=")[0] in line, line


def test_limits_in_range_are_taken():
    from edgeprune.cli.options import MAX_SECONDS, positive_seconds, some_seconds

    assert positive_seconds(0.5) == 0.5 and positive_seconds(MAX_SECONDS) == MAX_SECONDS
    assert some_seconds(0.0) == 0.0 and positive_seconds(None) is None


# ---- trtexec -------------------------------------------------------------------------
def test_a_hanging_trtexec_is_stopped_with_everything_it_started(tmp_path):
    """trtexec (a stand-in script here: TensorRT is not on this machine) building an
    engine hangs: at the limit the whole process group is killed, not only trtexec."""
    from edgeprune.core.backends.tensorrt import run_trtexec

    trtexec, pidfile = _hanging(tmp_path, "trtexec")
    t0 = time.monotonic()
    with pytest.raises(EdgepruneError) as e:
        run_trtexec([str(trtexec), "--onnx=m.onnx"], "building the engine", timeout=1)
    line = e.value.one_line()
    assert "trtexec (building the engine) did not finish within 1 s" in line, line
    assert time.monotonic() - t0 < 15
    assert _wait_gone(int(pidfile.read_text())), "trtexec's child still runs"


def test_a_failing_trtexec_is_one_line_with_its_last_words(tmp_path):
    trtexec = tmp_path / "trtexec"
    trtexec.write_text("#!/bin/sh\necho '[E] parse error at node 7' >&2\nexit 3\n")
    trtexec.chmod(0o755)
    from edgeprune.core.backends.tensorrt import run_trtexec

    with pytest.raises(EdgepruneError, match=r"exit 3\): \[E\] parse error at node 7"):
        run_trtexec([str(trtexec)], "building the engine", timeout=10)
