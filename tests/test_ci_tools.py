"""CI tests what it claims: a test that needs a system tool (sshd, adb, g++) skips
without it on a developer's machine, but FAILS under CI=true (tests/conftest.py
``need_tool``), and .ci/run lets no missing tool through."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import in_ci, need_tool, tool_unavailable

ROOT = Path(__file__).resolve().parents[1]
NO_SUCH_TOOL = "edgeprune-no-such-tool-4f1c"


def test_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match=f"CI=true and '{NO_SUCH_TOOL}' is not"):
        need_tool(NO_SUCH_TOOL)
    with pytest.raises(pytest.fail.Exception, match="sshd could not start"):
        tool_unavailable("sshd could not start: no host keys")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_missing_tool_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match=f"'{NO_SUCH_TOOL}' is not installed"):
        need_tool(NO_SUCH_TOOL)


def test_present_tool_is_found_in_ci_and_out(monkeypatch, tmp_path):
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("CI", "true")
    assert need_tool("mytool", str(tool)) == str(tool)  # at a path off PATH (sshd)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    assert need_tool("mytool", "/nonexistent") == str(tool)


def test_ci_check_tools_fails_naming_what_is_missing(tmp_path):
    """.ci/run (under CI=true) runs .ci/system-deps with no '|| echo' and then
    .ci/check-tools, which exits 1 naming every missing tool."""
    run = (ROOT / ".ci" / "run").read_text()
    steps = [ln.strip() for ln in run.splitlines() if not ln.lstrip().startswith("#")]
    assert "export CI=true" in steps and ".ci/system-deps" in steps
    assert ".ci/check-tools" in steps and not any("|| echo" in ln for ln in steps)
    empty = tmp_path / "bin"
    empty.mkdir()
    script = str(ROOT / ".ci" / "check-tools")
    bare = subprocess.run(
        ["/bin/bash", script], env={"PATH": str(empty)}, capture_output=True, text=True
    )
    assert bare.returncode == 1
    missing = bare.stderr.split("missing system tools:")[1].split("(")[0].split()
    assert {"ssh", "scp", "adb", "g++"} <= set(missing)
    # with every tool present (stand-ins on PATH) it passes
    for name in ("ssh", "scp", "ssh-keygen", "adb", "g++", "sshd"):
        (empty / name).write_text("#!/bin/sh\n")
        (empty / name).chmod(0o755)
    full = subprocess.run(
        ["/bin/bash", script], env={"PATH": str(empty)}, capture_output=True, text=True
    )
    assert full.returncode == 0 and full.stderr == ""
