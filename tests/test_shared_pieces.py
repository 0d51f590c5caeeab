"""The pieces several modules share instead of repeating: option groups of the CLI
(``cli_options.grouped``) and ``records.record`` for the JSON dicts."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import typer

from edgeprune.cli import groups as g
from edgeprune.core.records import record


def test_grouped_spreads_a_group_in_place_and_hands_one_instance():
    @g.grouped
    def cmd(x: int, remote: g.Remote = g.Remote(timeout=900.0), flag: bool = False):
        return x, remote, flag

    params = inspect.signature(cmd).parameters
    names = ["x", "host", "remote_python", "ssh_config", "timeout", "serial", "here", "flag"]
    assert list(params) == names
    assert params["timeout"].default == 900.0 and params["here"].default is False
    given = {**{n: params[n].default for n in names[1:]}, "x": 1, "host": "me@jetson"}
    got = cmd(**given)
    assert got == (1, g.Remote(host="me@jetson", timeout=900.0), False)


def test_grouped_refuses_a_group_that_repeats_a_parameter():
    with pytest.raises(TypeError, match="repeats"):

        @g.grouped
        def cmd(timeout: float = 1.0, remote: g.Remote = g.Remote()):
            return timeout, remote


def test_commands_share_the_groups_with_their_own_defaults():
    from edgeprune.cli.app import app

    cmds = typer.main.get_command(app).commands
    timeout = {c: {p.name: p for p in cmds[c].params}["timeout"] for c in ("profile", "bench")}
    assert timeout["profile"].default == 900.0 and timeout["bench"].default == 600.0
    for c in ("inspect", "export"):
        assert {"method", "keep", "locs", "heads", "calibration", "tome_r", "budget"} <= {
            p.name for p in cmds[c].params
        }
    assert {"resize", "mean", "std"} <= {p.name for p in cmds["evaluate"].params}


def test_model_choice_resolves_like_the_library():
    from edgeprune.core.source import resolve

    src = "deit_tiny:dynamicvit@0.7"
    got = g.ModelChoice(keep="0.8,0.6,0.4").resolve(src)
    want = resolve(src, keep="0.8,0.6,0.4")
    assert got.plan == want.plan


def test_record_names_renames_and_lists_tuples():
    @dataclass
    class R:
        a: int
        b: tuple[int, ...]

        @property
        def c(self) -> int:
            return self.a * 2

    assert record(R(1, (2, 3)), "a total=c b") == {"a": 1, "total": 2, "b": [2, 3]}
    assert list(record(R(1, ()), "b a")) == ["b", "a"]
