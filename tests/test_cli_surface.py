"""The command line as a newcomer meets it: options grouped in --help panels, flags shown
as flags, tables that fit 80 columns, bad input refused before the heavy imports, and the
old names of renamed commands and options still accepted (hidden)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgeprune.cli.app import COMMAND_ALIASES, COMMANDS

ENV80 = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}


@pytest.fixture
def help_of(cli, monkeypatch):
    """A command's --help text, in-process, at 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")

    def _help(*args: str) -> str:
        code, out, err = cli(*args, "--help")
        assert code == 0, err
        return out

    return _help


def test_help_lists_every_command_and_no_old_name(help_of):
    text = help_of()
    for name in COMMANDS:
        assert f" {name} " in text, name
    for old in COMMAND_ALIASES:
        assert old not in text, old
    assert "<bool>" not in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_fits_80_columns_and_shows_flags_as_flags(name, help_of):
    text = help_of(name)
    assert "<bool>" not in text, name
    assert all(len(line) <= 80 for line in text.splitlines()), name


def test_export_options_come_in_panels(help_of):
    text = help_of("export")
    panels = [ln.strip("╭─ ").split(" ─")[0] for ln in text.splitlines() if ln.startswith("╭─")]
    for panel in ("Model", "Output", "TensorRT (--target trt)", "Core ML (--target coreml)"):
        assert panel in panels, panels
    # no panel holds most of the options: the target-only ones sit apart
    assert len(panels) >= 6, panels


def test_devices_table_fits_80_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, text, err = cli("devices")
    assert code == 0, err
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [ln for ln in lines if len(ln) > 80]
    rows = json.loads(cli("devices", "--json")[1])["devices"]
    for r in rows:  # every name whole, and no Python None shown for a missing serial
        assert any(line.split()[:1] == [r["name"]] for line in lines), r["name"]
    table = []
    for line in lines[2:]:  # the table: from its header to the first blank line
        if not line.strip():
            break
        table.append(line)
    assert "None" not in text and not any("…" in line for line in table), table


HEAVY = ("torch", "onnx", "onnxruntime", "executorch")
BAD = [
    ["bench", "nope.pte"],
    ["budget", "--table", "nope.json", "--target-ms", "5"],
    ["predict", "deit_tiny", "--table", "nope.json"],
    ["table-info", "nope.json"],
    ["validate", "nope.json"],
    ["check", "nope.onnx"],
    ["export", "deit_tiny", "--budget", "nope.json"],
    ["evaluate", "deit_tiny", "--images", "nope"],
    ["export", "deit_tiny", "--batch", "x"],
    # time limits and waits: positive (waits: non-negative) finite seconds only
    ["profile", "--device", "cpu", "--timeout", "0"],
    ["profile", "--device", "cpu", "--timeout", "-1"],
    ["bench", "--timeout", "nan", "nope.pte"],
    ["bench", "--timeout", "inf", "nope.pte"],
    ["devices", "--timeout", "0"],
    ["devices", "--timeout", "nan"],
    ["bench", "--max-time", "inf", "nope.pte"],
    ["bench", "--max-time", "0", "nope.pte"],
    ["bench", "--cooldown", "-1", "nope.pte"],
    ["bench", "--cooldown", "nan", "nope.pte"],
    ["validate", "--wait-quiet=nan", "nope.json"],
    ["budget", "--table", "nope.json", "--target-ms", "5", "--verify", "--wait-quiet=inf"],
    ["demo-images", "d", "--size", "100000"],
    ["demo-images", "d", "--per-class", str(10**9)],
    ["demo-images", "/dev/null"],
]


def test_bad_input_is_refused_before_heavy_imports(tmp_path):
    """Each case in one interpreter, in turn: exit 2, one line, and none of the heavy
    packages loaded (so the answer comes in a fraction of a second, busy machine or not)."""
    code = (
        "import json, sys\n"
        "from edgeprune.cli import main\n"
        f"for args in {BAD!r}:\n"
        "    rc = main(args)\n"
        f"    loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "    print(json.dumps([args, rc, loaded]), flush=True)\n"
        "    print('--', file=sys.stderr, flush=True)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=ENV80
    )
    assert res.returncode == 0, res.stderr
    results = [json.loads(line) for line in res.stdout.splitlines()]
    errors = res.stderr.split("--\n")
    assert len(results) == len(BAD)
    for (args, rc, loaded), err in zip(results, errors, strict=False):
        assert rc == 2 and loaded == [], (args, rc, loaded)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, err)


def test_old_names_still_work(cli, tmp_path):
    from tests.profile_helper import synthetic_table

    table = tmp_path / "t.json"
    synthetic_table().save(table)
    new = cli("table-info", table, "--json")
    old = cli("profile-info", table, "--json")
    assert new[0] == old[0] == 0 and json.loads(new[1]) == json.loads(old[1])
    a = cli("predict", "deit_tiny:dynamicvit@0.7", "--table", table, "--json")
    b = cli("predict", "deit_tiny:dynamicvit@0.7", "--profile", table, "--json")
    c = cli("predict", "deit_tiny:dynamicvit@0.7", f"--profile={table}", "--json")
    assert a[0] == b[0] == c[0] == 0, (a, b, c)
    assert json.loads(a[1]) == json.loads(b[1]) == json.loads(c[1])
    assert cli("validate-profile", "--help")[0] == 0
