"""Every ``edgeprune …`` command in a ```bash block of README.md and docs/*.md runs, so
none can go stale.

Each page is one session: its commands run in order, in-process through
``edgeprune.cli.app.main``, in one temporary folder (an export made earlier feeds a later
``bench``). A command must exit 0, or with the code its line announces in a trailing
comment (``# exits 1``; ``# exits 2 without TensorRT``: 2 where neither the ``tensorrt``
module nor ``trtexec`` is here, else 0).

What needs hardware that is not here, or would take minutes, runs through the rewrite
rules of ``RULES`` (each named, applied to every command it matches and to nothing else):

- ``remote-device``: a device profile reached over SSH/adb or only on macOS
  (``REMOTE_DEVICES``) runs on this machine: ``profile`` on ``cpu``, ``bench`` on
  ``cpu-xnnpack`` for a ``.pte`` and ``cpu`` otherwise; ``--host``, ``--serial``,
  ``--ssh-config`` and ``--remote-python`` are dropped.
- ``profile-on-cpu``: every ``profile`` measures ``cpu`` (an ExecuTorch sweep lowers each
  piece, minutes); a rewritten device keeps the file name it would have written.
- ``quick-sweep``: ``profile`` times 2 token counts, 2 runs, no anchors, no plot.
- ``no-tensorrt``: where TensorRT is absent, a ``.engine`` argument of a later command is
  the ``.onnx`` that ``export --target trt`` kept beside it.
- ``targets-from-table``: a latency target (``--target-ms``/``--target-fps``) becomes 70 %
  of the table's dense prediction on this machine (``predict ARCH --table T --json``), so
  it is reachable whatever the machine's speed; with ``--verify`` 3 times it (the quick
  table predicts low, and re-anchoring scales it to the measured dense model).
- ``quick-table-margin``: ``budget`` aims 10 % under the target (``--margin 10%``) unless
  its line gives a margin: a quick table's noise is above what ``--margin auto`` accepts.
- ``verify-either-way``: ``budget --verify`` may exit 0 (met) or 1 (missed when measured);
  3 timing rounds.
- ``few-runs``: fewer inputs, runs, points and steps (``FEW_RUNS``): ``export
  --parity-inputs 2``, ``bench --runs 5``, ``validate --configs 2 --rounds 3``,
  ``calibrate --random 2``, ``evaluate --limit 4``, ``sensitivity --limit 4 --grid 0.5,1``,
  ``finetune --epochs 1 --batch 2 --limit 4 --steps-per-epoch 1``.

Lines that are not edgeprune commands are skipped by their first word (``NOT_EDGEPRUNE``);
any other line fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeprune.cli.app import app, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
DEVICES_DIR = ROOT / "profiles" / "devices"

# first words of bash-block lines that are not edgeprune commands: skipped
NOT_EDGEPRUNE = ("pip", "pytest", "python", "torchrun", "adb", "cmake", "./build.sh", "trtexec")
# device profiles that need hardware absent here (SSH, adb, macOS)
REMOTE_DEVICES = {
    "jetson", "jetson-orin-nano", "jetson-agx-orin",
    "android", "android-arm64", "android-ort", "android-arm64-ort", "iphone",
}  # fmt: skip
REMOTE_OPTIONS = ("--host", "--serial", "--ssh-config", "--remote-python")
QUICK_SWEEP = ["--grid", "1,197", "--runs", "2", "--check-points", "0", "--chain", "1"]
QUICK_SWEEP_FLAGS = ["--no-e2e", "--no-plot"]
TARGET_SHARE = 0.7  # of the table's dense prediction
VERIFY_TARGET_SHARE = 3.0  # with --verify (re-anchored to the dense model measured here)
FEW_RUNS = {
    "export": {"--parity-inputs": "2"},
    "bench": {"--runs": "5"},
    "validate": {"--configs": "2", "--rounds": "3"},
    "calibrate": {"--random": "2"},
    "evaluate": {"--limit": "4"},
    "sensitivity": {"--limit": "4", "--grid": "0.5,1"},
    "finetune": {"--epochs": "1", "--batch": "2", "--limit": "4", "--steps-per-epoch": "1"},
}
EXITS = re.compile(r"#\s*exits (\d+)( without TensorRT)?")
# what the output of a command announced to exit 2 without TensorRT must say
NO_TENSORRT = "neither TensorRT (Python) nor trtexec is available here"
TENSORRT_HERE = importlib.util.find_spec("tensorrt") is not None or bool(shutil.which("trtexec"))


@dataclass(kw_only=True)
class Command:
    """One documented command: where it is, its argv and the exit codes it may end with."""

    page: str
    line: str
    argv: list[str]
    exits: set[int]
    says: str = ""  # when it exits non-zero, what its output must contain
    rules: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.argv[0]

    def option(self, flag: str) -> str | None:
        return self.argv[self.argv.index(flag) + 1] if flag in self.argv else None

    def drop(self, flag: str, takes_value: bool = True) -> None:
        while flag in self.argv:
            i = self.argv.index(flag)
            del self.argv[i : i + (2 if takes_value else 1)]

    def set(self, flag: str, value: str) -> None:
        self.drop(flag)
        self.argv += [flag, value]


# ---- reading the pages -------------------------------------------------------------------


def bash_lines(text: str) -> list[str]:
    """The logical lines of a page's ```bash blocks (backslash continuations joined)."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            inside = raw.strip() == "```bash"
            continue
        if not inside:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = (pending + raw).strip(), ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def expected_exits(line: str) -> set[int]:
    m = EXITS.search(line)
    if m is None:
        return {0}
    if m.group(2) and TENSORRT_HERE:
        return {0}
    return {int(m.group(1))}


def page_commands(page: Path) -> list[Command]:
    """The page's edgeprune commands; a line that is neither one nor skipped fails."""
    cmds = []
    for line in bash_lines(page.read_text()):
        words = shlex.split(line, comments=True)
        if words[0] in NOT_EDGEPRUNE:
            continue
        assert words[0] == "edgeprune", (
            f"{page.name}: '{line}' is neither an edgeprune command nor in NOT_EDGEPRUNE"
        )
        assert not {"|", "&&", ";", ">"} & set(words), f"{page.name}: '{line}' is a pipeline"
        cmd = Command(page=page.name, line=line, argv=words[1:], exits=expected_exits(line))
        if "without TensorRT" in line:
            cmd.says = NO_TENSORRT
        cmds.append(cmd)
    return cmds


# ---- the rewrite rules ----------------------------------------------------------------------


def device_names() -> dict[str, str]:
    """Every device profile's name and alias -> its name (read from the descriptors)."""
    names = {}
    for path in DEVICES_DIR.glob("*.toml"):
        d = tomllib.loads(path.read_text())
        for n in [d["name"], *d.get("aliases", [])]:
            names[n] = d["name"]
    return names


def remote_device(cmd: Command, session: Session) -> None:
    device = cmd.option("--device") or cmd.option("-d")
    if cmd.name not in ("profile", "bench") or device not in REMOTE_DEVICES:
        return
    for flag in REMOTE_OPTIONS:
        cmd.drop(flag)
    if cmd.name == "bench":
        local = "cpu-xnnpack" if cmd.argv[1].endswith(".pte") else "cpu"
        cmd.set("--device", local)
        cmd.drop("-d")
    cmd.rules.append("remote-device")


def profile_on_cpu(cmd: Command, session: Session) -> None:
    device = cmd.option("--device") or cmd.option("-d")
    if cmd.name != "profile" or device == "cpu":
        return
    if cmd.option("--out") is None and cmd.option("-o") is None:
        arch = cmd.option("--arch") or "deit_small"
        method = cmd.option("--method")
        suffix = f"_{method}" if method else ""
        cmd.set("--out", f"profile_{device_names()[device]}_{arch}{suffix}.json")
    cmd.drop("-d")
    cmd.set("--device", "cpu")
    cmd.rules.append("profile-on-cpu")


def quick_sweep(cmd: Command, session: Session) -> None:
    if cmd.name != "profile":
        return
    for flag in QUICK_SWEEP[::2]:
        cmd.drop(flag)
    for flag in ("--e2e", "--no-e2e", "--plot", "--no-plot"):
        cmd.drop(flag, takes_value=False)
    cmd.argv += QUICK_SWEEP + QUICK_SWEEP_FLAGS
    cmd.rules.append("quick-sweep")


def no_tensorrt(cmd: Command, session: Session) -> None:
    if TENSORRT_HERE or cmd.name == "export":
        return
    renamed = [re.sub(r"\.engine$", ".onnx", a) for a in cmd.argv]
    if renamed != cmd.argv:
        cmd.argv = renamed
        cmd.rules.append("no-tensorrt")


def targets_from_table(cmd: Command, session: Session) -> None:
    if cmd.name not in ("budget", "finetune") or not {"--target-ms", "--target-fps"} & set(
        cmd.argv
    ):
        return
    table = cmd.option("--table")
    assert table, f"{cmd.page}: '{cmd.line}' gives a target without --table"
    share = VERIFY_TARGET_SHARE if "--verify" in cmd.argv else TARGET_SHARE
    cmd.drop("--target-fps")
    cmd.set("--target-ms", f"{share * session.dense_ms(table):.3f}")
    cmd.rules.append("targets-from-table")


def quick_table_margin(cmd: Command, session: Session) -> None:
    if cmd.name == "budget" and cmd.option("--margin") is None:
        cmd.set("--margin", "10%")
        cmd.rules.append("quick-table-margin")


def verify_either_way(cmd: Command, session: Session) -> None:
    if cmd.name == "budget" and "--verify" in cmd.argv:
        cmd.set("--rounds", "3")
        cmd.exits = {0, 1}
        cmd.rules.append("verify-either-way")


def few_runs(cmd: Command, session: Session) -> None:
    changes = FEW_RUNS.get(cmd.name, {})
    for flag, value in changes.items():
        cmd.set(flag, value)
    if changes:
        cmd.rules.append("few-runs")


RULES: tuple[Callable[[Command, Session], None], ...] = (
    remote_device,
    profile_on_cpu,
    quick_sweep,
    no_tensorrt,
    targets_from_table,
    quick_table_margin,
    verify_either_way,
    few_runs,
)


# ---- running a page -------------------------------------------------------------------------


class Session:
    """One page's commands, run in order in one folder."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        code = main(list(argv))
        cap = self.capsys.readouterr()
        return code, cap.out, cap.err

    def dense_ms(self, table: str) -> float:
        """The table's dense prediction for its own arch (``predict ARCH --json``)."""
        arch = json.loads(Path(table).read_text())["arch"]["name"]
        code, out, err = self.run(["predict", arch, "--table", table, "--json"])
        assert code == 0, err
        return json.loads(out)["predicted_ms"]


PAGES_WITH_COMMANDS = [p for p in PAGES if page_commands(p)]


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=lambda p: p.name)
def test_every_documented_command_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    session = Session(capsys)
    for cmd in page_commands(page):
        for rule in RULES:
            rule(cmd, session)
        code, out, err = session.run(cmd.argv)
        what = (
            f"{page.name}: '{cmd.line}'\n  ran as: edgeprune {shlex.join(cmd.argv)}"
            f"\n  rules: {', '.join(cmd.rules) or 'none matched'}"
            f"\n  exit {code}, expected {sorted(cmd.exits)}\n{out[-2000:]}\n{err[-2000:]}"
        )
        assert code in cmd.exits, what
        assert "internal error" not in err, what
        if code != 0:
            assert cmd.says in out + err, what


# ---- what the pages promise about themselves -------------------------------------------------


def test_pages_show_commands():
    names = {p.name for p in PAGES_WITH_COMMANDS}
    assert {"README.md", "targets.md", "devices.md", "budgets.md"} <= names
    assert sum(len(page_commands(p)) for p in PAGES) >= 30


def test_readme_is_short_and_sets_up_as_ci_does():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    lines = bash_lines(text)
    setup = 'pip install -e ".[dev,executorch,train]"'
    assert any(shlex.split(line, comments=True) == shlex.split(setup) for line in lines)
    test = ["pytest", "-n", "3", "&&", "pytest", "-m", "quiet"]
    assert any(shlex.split(line, comments=True) == test for line in lines)
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pip install -q -e ".[dev,executorch,train]"' in ci
    assert re.search(r"^pytest -n 3 && pytest -m quiet$", ci, re.M)


def test_readme_lists_every_command():
    listed = set(re.findall(r"^\| `([a-z-]+)", README.read_text(), re.M))
    visible = {c.name for c in app.registered_commands if not c.hidden}
    assert listed == visible


def test_links_resolve_and_every_page_is_linked():
    linked = set()
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.name} links to missing {target}"
            linked.add(path)
    assert {p.resolve() for p in PAGES[1:]} <= linked
