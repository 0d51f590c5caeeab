"""The conditions a measurement ran under, on the host a runner runs on: the load average,
the CPU time other processes took while timing, CPU frequency and governor, threads,
affinity and thermal zones (here, or on a device through its transport), and the verdict
whether the machine was fit to time on (one warning line when not). Also: waiting,
bounded, for a quiet machine (``wait_quiet``) and pinning this process to CPUs
(``pinned``).

Linux gives all of it (/proc, /sys); what cannot be read is None ("unknown"), never a
guess. Others' CPU use is the busy time of the CPUs this process may run on
(/proc/stat: user, nice, system, irq, softirq, steal) minus this process's own
(/proc/self/stat: utime, stime and its waited-for children's), per second of wall time.
It decides the verdict; the load average lags by a minute, so it decides only where
/proc is absent.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeprune.core.errors import EdgepruneError

OTHERS_MAX_PCT = 25.0  # others' CPU use (% of one core) above which timing is unfit
PROC_STAT = "/proc/stat"
PROC_SELF_STAT = "/proc/self/stat"
PROC_SELF_TASKS = "/proc/self/task"
CPUFREQ = "/sys/devices/system/cpu/cpu{}/cpufreq"
THERMAL = "/sys/class/thermal"
QUIET_WINDOW_S = 1.0  # one look at others' CPU use while waiting
# others' CPU use is counted in clock ticks (10 ms): a watch shorter than this is
# lengthened (idle) to it, so that a few ticks do not read as a busy machine
MIN_WATCH_S = 0.5
QUIET_WINDOWS = 2  # quiet this many windows in a row to count as quiet
# the thermal zones, one "thermal_zoneN/type:…" and "thermal_zoneN/temp:…" line each
THERMAL_SCRIPT = "cd {root} 2>/dev/null && grep -H . thermal_zone*/type thermal_zone*/temp"


def cores() -> int:
    """The machine's CPU count (what the load average is measured against)."""
    return os.cpu_count() or 1


def affinity() -> tuple[int, ...] | None:
    """The CPUs this process may run on; None where the OS does not say."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return tuple(sorted(os.sched_getaffinity(0)))


def load_average() -> float | None:
    """The 1-minute load average; None where there is none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


@dataclass(frozen=True)
class Ticks:
    """CPU time so far, in clock ticks: busy on the watched CPUs, and this process's own."""

    busy: int
    own: int
    at: float  # time.monotonic() when read


def busy_ticks(fields: Sequence[str]) -> int:
    """Busy ticks of one /proc/stat cpu line's numbers: everything but idle and iowait
    (user nice system idle iowait irq softirq steal; guest time is inside user)."""
    v = [int(x) for x in fields[:8]]
    v += [0] * (8 - len(v))
    return sum(v) - v[3] - v[4]


def own_ticks(stat_line: str) -> int:
    """utime + stime + cutime + cstime of a /proc/<pid>/stat line (after the command
    name, which may hold spaces and parentheses)."""
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return sum(int(x) for x in fields[11:15])


def read_ticks(cpus: Sequence[int] | None = None) -> Ticks | None:
    """Busy ticks of ``cpus`` (all when None, or when /proc/stat lacks one) and this
    process's own; None where /proc is absent."""
    try:
        stat = Path(PROC_STAT).read_text()
        me = Path(PROC_SELF_STAT).read_text()
    except OSError:
        return None
    lines = {
        p[0]: p[1:] for p in (ln.split() for ln in stat.splitlines()) if p and p[0][:3] == "cpu"
    }
    keys = [f"cpu{c}" for c in cpus] if cpus else []
    if not keys or any(k not in lines for k in keys):
        keys = ["cpu"]
    if any(k not in lines for k in keys):
        return None
    return Ticks(sum(busy_ticks(lines[k]) for k in keys), own_ticks(me), time.monotonic())


def others_pct(before: Ticks | None, after: Ticks | None) -> float | None:
    """Other processes' CPU use between two reads, in % of one core; None: unknown."""
    if before is None or after is None or after.at <= before.at:
        return None
    ticks = (after.busy - before.busy) - (after.own - before.own)
    return round(max(0.0, 100.0 * ticks / _clock_ticks() / (after.at - before.at)), 1)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpufreq(cpus: Sequence[int] | None) -> dict[str, dict]:
    """Per CPU, its current frequency (MHz) and governor, where /sys says ({} where not)."""
    out = {}
    for c in cpus or range(cores()):
        base = CPUFREQ.format(c)
        khz, governor = _read(f"{base}/scaling_cur_freq"), _read(f"{base}/scaling_governor")
        d = {}
        if khz and khz.isdigit():
            d["mhz"] = round(int(khz) / 1000.0)
        if governor:
            d["governor"] = governor
        if d:
            out[f"cpu{c}"] = d
    return out


def celsius(raw: str) -> float | None:
    """A thermal zone's temp in °C: millidegrees (Linux), or degrees on the devices that
    write those; None for what is no temperature (unreadable, or a sentinel)."""
    try:
        v = float(raw.strip())
    except ValueError:
        return None
    if abs(v) >= 1000:
        v /= 1000.0
    return round(v, 1) if -40.0 <= v <= 200.0 else None


def parse_thermal(text: str) -> dict[str, dict]:
    """``THERMAL_SCRIPT``'s output as {zone: {"type": …, "celsius": …}}, zones in number
    order; zones without a readable temperature left out."""
    zones: dict[str, dict] = {}
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        zone, _, leaf = path.strip().partition("/")
        if not sep or not re.fullmatch(r"thermal_zone\d+", zone) or leaf not in ("type", "temp"):
            continue
        z = zones.setdefault(zone, {})
        if leaf == "type":
            z["type"] = value.strip()
        elif (c := celsius(value)) is not None:
            z["celsius"] = c
    order = sorted(zones, key=lambda z: int(z[len("thermal_zone") :]))
    return {z: zones[z] for z in order if "celsius" in zones[z]}


def thermal_here(root: str | None = None) -> dict[str, dict]:
    """This machine's thermal zones (``parse_thermal``) under ``root`` (None:
    ``THERMAL``); {} where there are none."""
    root = root or THERMAL
    lines = []
    for zone in glob.glob(f"{root}/thermal_zone*"):
        for leaf in ("type", "temp"):
            value = _read(f"{zone}/{leaf}")
            if value is not None:
                lines.append(f"{Path(zone).name}/{leaf}:{value}")
    return parse_thermal("\n".join(lines))


def thermal_over(transport, root: str | None = None, timeout: float = 30.0) -> dict[str, dict]:
    """The thermal zones of the device behind ``transport`` (a phone over adb, a board
    over SSH) under ``root`` (None: ``THERMAL``); {} where it has none or they cannot be
    read."""
    script = THERMAL_SCRIPT.format(root=shlex.quote(root or THERMAL))
    try:
        res = transport.run(["sh", "-c", script], timeout=timeout)
    except EdgepruneError:
        return {}
    return parse_thermal(res.stdout or "")


def hottest(zones: dict[str, dict]) -> float | None:
    return max((z["celsius"] for z in zones.values()), default=None)


@dataclass(kw_only=True)
class Wait:
    """What ``wait_quiet`` saw: how long it waited, whether the machine got quiet (None:
    nothing to tell it by), and others' CPU use in the last look (% of one core)."""

    limit_s: float
    waited_s: float
    quiet: bool | None
    others_pct: float | None


@dataclass(kw_only=True)
class Conditions:
    """The host while timing: ``to_dict()`` goes into ``Timing.extra["conditions"]``."""

    cores: int
    affinity: list[int] | None
    pinned: bool = False
    threads: int | None = None
    load_before: float | None = None
    load_after: float | None = None
    others_cpu_pct: float | None = None  # while timing, % of one core; None: unknown
    seconds: float = 0.0  # how long the watch lasted
    cpufreq_before: dict = field(default_factory=dict)
    cpufreq_after: dict = field(default_factory=dict)
    thermal_before: dict = field(default_factory=dict)
    thermal_after: dict = field(default_factory=dict)
    wait: Wait | None = None
    busy: bool = False
    warning: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(c: Conditions) -> tuple[bool, str | None]:
    """(busy, its warning line without ``warning:``): others used more than
    ``OTHERS_MAX_PCT`` % of a core while timing, or, where that is unknown, the load
    average was at least the core count; a ``wait`` that never got quiet is named."""
    loads = [x for x in (c.load_before, c.load_after) if x is not None]
    load = max(loads) if loads else None
    if c.others_cpu_pct is not None:
        busy = c.others_cpu_pct > OTHERS_MAX_PCT
        why = f"others used {c.others_cpu_pct:.0f} % CPU while timing"
    else:
        busy = load is not None and load >= c.cores
        why = "others' CPU use unknown here"
    if c.wait is not None and c.wait.quiet is False:
        why += f"; not quiet after waiting {c.wait.waited_s:.0f} s"
    if not busy:
        return False, None
    shown = f"load {load:.1f}" if load is not None else "load unknown"
    return True, f"machine busy: {shown} on {c.cores} cores ({why})"


class Watch:
    """The conditions around one measurement: made before it (``Watch(cpus)``), read
    after it (``finish``; a watch shorter than ``MIN_WATCH_S`` is first lengthened)."""

    def __init__(self, cpus: Sequence[int] | None = None):
        self.cpus = tuple(cpus) if cpus else affinity()
        self.load = load_average()
        self.freq = cpufreq(self.cpus)
        self.thermal = thermal_here()
        self.at = time.monotonic()
        self.ticks = read_ticks(self.cpus)

    def finish(
        self, *, threads: int | None = None, pinned: bool = False, wait: Wait | None = None
    ) -> Conditions:
        short = MIN_WATCH_S - (time.monotonic() - self.at)
        if short > 0:
            time.sleep(short)
        ticks = read_ticks(self.cpus)
        c = Conditions(
            cores=cores(),
            affinity=list(self.cpus) if self.cpus else None,
            pinned=pinned,
            threads=threads,
            load_before=self.load,
            load_after=load_average(),
            others_cpu_pct=others_pct(self.ticks, ticks),
            seconds=round(time.monotonic() - self.at, 3),
            cpufreq_before=self.freq,
            cpufreq_after=cpufreq(self.cpus),
            thermal_before=self.thermal,
            thermal_after=thermal_here(),
            wait=wait,
        )
        c.busy, c.warning = verdict(c)
        return c


def wait_quiet(
    limit_s: float,
    *,
    cpus: Sequence[int] | None = None,
    progress: Callable[..., None] | None = None,
    window_s: float = QUIET_WINDOW_S,
) -> Wait:
    """Wait, at most ``limit_s`` seconds, until others use at most ``OTHERS_MAX_PCT`` % of
    a core for ``QUIET_WINDOWS`` windows of ``window_s`` in a row (where /proc is absent:
    until the load average is below the core count). ``progress(text, done, total)``
    is told after every window."""
    start = time.monotonic()
    quiet_in_a_row, pct = 0, None
    while True:
        before = read_ticks(cpus)
        time.sleep(window_s)
        pct = others_pct(before, read_ticks(cpus))
        load = load_average()
        if pct is None and load is None:
            return Wait(limit_s=limit_s, waited_s=0.0, quiet=None, others_pct=None)
        quiet = pct <= OTHERS_MAX_PCT if pct is not None else load < cores()
        quiet_in_a_row = quiet_in_a_row + 1 if quiet else 0
        waited = time.monotonic() - start
        if quiet_in_a_row >= QUIET_WINDOWS or waited >= limit_s:
            done = quiet_in_a_row >= QUIET_WINDOWS
            return Wait(limit_s=limit_s, waited_s=round(waited, 1), quiet=done, others_pct=pct)
        if progress is not None:
            seen = f"others use {pct:.0f} % CPU" if pct is not None else f"load {load:.1f}"
            progress(f"waiting for a quiet machine ({seen})", int(waited), int(limit_s))


def parse_cpus(text: str) -> tuple[int, ...]:
    """``--pin``'s CPUs: ``1``, ``0,1`` or ``0-3``; each one this process may use. One line
    (exit 2) for anything else, or where the OS cannot pin."""
    if not hasattr(os, "sched_setaffinity"):
        raise EdgepruneError("--pin: this system cannot set a process's CPU affinity")
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise EdgepruneError(
                f"--pin '{text}' is not a CPU list", "e.g. --pin 1, --pin 0,1 or --pin 0-3"
            )
        cpus.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    allowed = set(os.sched_getaffinity(0))
    if not cpus <= allowed:
        bad = ",".join(map(str, sorted(cpus - allowed)))
        raise EdgepruneError(
            f"--pin {text}: CPU {bad} is not one this process may use",
            f"available: {','.join(map(str, sorted(allowed)))}",
        )
    return tuple(sorted(cpus))


def _threads() -> list[int]:
    """This process's threads (their ids), or [0] (the calling one) where /proc is absent."""
    try:
        return [int(t) for t in os.listdir(PROC_SELF_TASKS)]
    except OSError:
        return [0]


def _set_affinity(cpus) -> None:
    for tid in _threads():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def pinned(cpus: Sequence[int] | None) -> Iterator[tuple[int, ...] | None]:
    """Every thread of this process (and those it starts) on ``cpus`` inside the block,
    all of them back on the CPUs they had after it; nothing when ``cpus`` is None."""
    if not cpus:
        yield affinity()
        return
    old = os.sched_getaffinity(0)
    _set_affinity(cpus)
    try:
        yield tuple(sorted(cpus))
    finally:
        _set_affinity(old)


@contextlib.contextmanager
def watched(
    *,
    pin: Sequence[int] | None = None,
    wait_quiet_s: float | None = None,
    progress: Callable[..., None] | None = None,
) -> Iterator[dict]:
    """The conditions of a measurement on this machine (``profile``, ``validate``,
    ``budget --verify``): pinned to ``pin`` if given, after waiting up to
    ``wait_quiet_s`` for a quiet machine if given; the dict it yields is filled with
    ``Conditions.to_dict()`` when the block ends without an error."""
    if wait_quiet_s is not None and wait_quiet_s < 0:
        raise EdgepruneError(f"--wait-quiet {wait_quiet_s:g} must be 0 seconds or more")
    record: dict = {}
    with pinned(pin) as cpus:
        wait = wait_quiet(wait_quiet_s, cpus=cpus, progress=progress) if wait_quiet_s else None
        watch = Watch(cpus)
        yield record
        record.update(watch.finish(pinned=pin is not None, wait=wait).to_dict())

