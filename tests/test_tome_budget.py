"""ToMe in ``budget``, ``validate-profile`` and ``budget --verify`` (issue #31): schedules
over r, the tokens merged per block, predicted from the latency table's tokens per block.

The tables here are made up (``measured: false``) with a knot at every token count, so
the latency model's linear interpolation is exact at integer counts and every
prediction has a closed form: embed + head + Σ_blocks (block(n) when the block merges
nothing, else attn(n) + mlp(n − r) + merge(n)), each curve a + b·n + c·n². The r
family is enumerated here as ToMe writes it (tome/utils.py ``parse_r``, facebookresearch/
ToMe af95e4b; the clamp of tome/merge.py), not with edgeprune's functions.
"""

from __future__ import annotations

import json
from functools import partial

import onnx
import pytest
import torch

import edgeprune.profiling.validate as validate
from edgeprune.budget.file import load_budget, resolve_with_budget
from edgeprune.budget.run import BudgetRequest, make_budget
from edgeprune.budget.search import INFLECTIONS, UnreachableTarget, search
from edgeprune.budget.verify import verify_budget
from edgeprune.core.arch import arch_from_dims, get_arch
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point
from edgeprune.render.tables import validation_table
from edgeprune.runtimes.timing import Timing

N0, DEPTH = 197, 12
EMBED, HEAD = 0.3, 0.05
BLOCK, ATTN, MLP, MERGE = (0.05, 0.004, 1e-5), (0.03, 0.0015, 1.2e-5), (0.02, 0.0025, 2e-6), (
    0.015, 0.0008, 2e-6,
)  # fmt: skip
# the tiny model of the export test: embed 32, 2 heads, depth 12, 197 tokens
TINY = arch_from_dims(32, DEPTH, 16, 224, 100, num_heads=2)


def quad(c, n: float) -> float:
    return c[0] + c[1] * n + c[2] * n * n


def table(arch="deit_tiny", e2e=None, runtime="none") -> LatencyTable:
    """The closed-form table: a knot at every token count 1..197."""
    ns = tuple(range(1, N0 + 1))

    def cv(c) -> Curve:
        ys = tuple(quad(c, n) for n in ns)
        return Curve(ns, ys, tuple(1.1 * y for y in ys))

    return LatencyTable(
        device={"name": "synthetic", "runtime": runtime, "threads": 1},
        arch=get_arch(arch) if isinstance(arch, str) else arch,
        method="tome", batch=1, date="synthetic", measured=False, block=cv(BLOCK),
        embed=Point(EMBED, EMBED), head=Point(HEAD, HEAD), attn=cv(ATTN), mlp=cv(MLP),
        selectors={"tome": cv(MERGE)}, e2e=EndToEnd((), *e2e) if e2e else None,
    )  # fmt: skip


# ---- the r family and the latency, by hand -------------------------------------------
def tome_parse_r(num_layers: int, r: int, inflect: float) -> list[int]:
    """tome/utils.py parse_r with (r, inflect), as released."""
    min_val = int(r * (1.0 - inflect))
    max_val = 2 * r - min_val
    step = (max_val - min_val) / (num_layers - 1)
    return [int(min_val + step * i) for i in range(num_layers)]


def as_run(rs) -> tuple[int, ...]:
    """What ToMe merges: each block's r clamped to (t − 1) // 2 (CLS protected)."""
    out, t = [], N0
    for r in rs:
        out.append(min(r, (t - 1) // 2))
        t -= out[-1]
    return tuple(out)


def family(schedule: str) -> set[tuple[int, ...]]:
    bends = [0.0] if schedule == "geometric" else [round(-1 + 0.1 * i, 1) for i in range(21)]
    rs = {as_run(tome_parse_r(DEPTH, r, f)) for r in range(1, (N0 - 1) // 2 + 1) for f in bends}
    return {s for s in rs if any(s)}


def closed_ms(rs, e2e=(0.0, 1.0)) -> float:
    total, n = EMBED + HEAD, N0
    for r in rs:
        total += quad(ATTN, n) + quad(MLP, n - r) + quad(MERGE, n) if r else quad(BLOCK, n)
        n -= r
    return e2e[0] + e2e[1] * total


def kept(rs) -> float:
    total, n = 0.0, N0
    for r in rs:
        total += (n + n - r) / 2
        n -= r
    return total


def brute_force(schedule: str, aim: float, truth=closed_ms) -> tuple[int, ...]:
    fits = [s for s in family(schedule) if truth(s) <= aim]
    return max(fits, key=lambda s: (kept(s), -truth(s)))


# ---- the search -----------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["geometric", "free"])
@pytest.mark.parametrize("e2e", [None, (0.2, 1.1)])
def test_search_picks_what_brute_force_over_the_r_family_picks(schedule, e2e):
    assert tuple(round(-1 + 0.1 * i, 1) for i in range(21)) == INFLECTIONS
    model = LatencyModel(table(e2e=e2e))
    corr = e2e or (0.0, 1.0)
    truth = partial(closed_ms, e2e=corr)
    dense = truth((0,) * DEPTH)
    for share, margin in ((0.35, 0.0), (0.5, 0.05), (0.7, 0.0), (0.9, 0.03)):
        target = share * dense
        res = search(model, target, "tome", schedule, margin=margin)
        want = brute_force(schedule, target * (1 - margin), truth)
        assert res.status == "ok" and res.chosen.r_schedule == want, (share, schedule)
        assert res.chosen.predicted_ms == pytest.approx(truth(want), rel=1e-9)
        assert res.chosen.kept_tokens == kept(want)
        assert {c.r_schedule for c in res.candidates} == family(schedule)
        # the plan is ToMe's at that schedule: N − Σ earlier r tokens enter block i
        attn = [N0 - sum(want[:i]) for i in range(DEPTH)]
        assert list(res.chosen.plan.attn_tokens) == attn
    assert res.dense_ms == pytest.approx(dense)


def test_unreachable_and_refused_options_name_the_r_schedule():
    model = LatencyModel(table())
    fastest = min(family("free"), key=closed_ms)
    with pytest.raises(UnreachableTarget, match=r"the fastest tome schedule \(r \[") as e:
        search(model, 0.9 * closed_ms(fastest), "tome", "free")
    assert f"predicts {closed_ms(fastest):.3f} ms" in str(e.value)
    assert "more locations" not in e.value.hint
    with pytest.raises(Exception, match="no --locs"):
        search(model, 5.0, "tome", locs=(1, 2))


# ---- the budget file, predict --budget, export --budget ----------------------------------
@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(VisionTransformer(TINY).state_dict(), path)
    return path


def test_budget_file_round_trips_and_drives_predict_and_export(cli, tmp_path, tiny_ckpt):
    t = tmp_path / "t.json"
    table(TINY).save(t)
    target = round(0.5 * closed_ms((0,) * DEPTH), 3)
    b = tmp_path / "b.json"
    search_args = ("--method", "tome", "--schedule", "free", "--margin", 0, "--no-plot")
    code, out, err = cli("budget", "--profile", t, "--target-ms", target, "--out", b, "--json",
                         *search_args)  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    want = brute_force("free", target)
    assert d["method"] == "tome" and tuple(d["r_schedule"]) == want
    assert d["predicted_ms"] == pytest.approx(closed_ms(want)) and d["predicted_ms"] <= target
    saved = load_budget(b)
    assert saved.r_schedule == want and saved.method == "tome" and saved.arch == TINY.name
    # the locations and keep ratios recorded are what the schedule keeps per stage
    src = resolve_with_budget(str(tiny_ckpt), b, heads=2)
    assert src.config.options["r"] == want and list(src.config.keep_ratios) == d["keep_ratios"]
    assert list(src.plan.attn_tokens) == d["tokens_per_block"]
    code, out, err = cli("predict", tiny_ckpt, "--heads", 2, "--profile", t, "--budget", b,
                         "--json")  # fmt: skip
    assert code == 0, err
    p = json.loads(out)
    assert p["predicted_ms"] == pytest.approx(d["predicted_ms"], abs=1e-9)
    assert tuple(p["r_schedule"]) == want
    m = tmp_path / "m.onnx"
    code, _, err = cli("export", tiny_ckpt, "--heads", 2, "--budget", b, "--out", m,
                       "--parity-inputs", 1)  # fmt: skip
    assert code == 0, err
    attn, mlp = graph_tokens(m)
    assert tuple(a - n for a, n in zip(attn, mlp, strict=True)) == want
    assert attn == d["tokens_per_block"]


def graph_tokens(path) -> tuple[list[int], list[int]]:
    """Tokens entering each block's attention and MLP in an exported graph: the static
    shapes of its LayerNormalizations (norm1, norm2 per block, then the final norm)."""
    g = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.input})
    ns = [shapes[n.input[0]][1] for n in g.node if n.op_type == "LayerNormalization"]
    assert len(ns) == 2 * DEPTH + 1
    return ns[0:-1:2], ns[1:-1:2]


def test_bad_r_schedules_and_options_one_line_exit_2(cli, tmp_path, tiny_ckpt):
    t = tmp_path / "t.json"
    table(TINY).save(t)
    good = tmp_path / "b.json"
    code, _, err = cli("budget", "--profile", t, "--method", "tome", "--target-ms", 4,
                       "--margin", 0, "--out", good)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "b.pareto.png").stat().st_size > 1000  # the plot of r schedules
    base = json.loads(good.read_text())

    def budget(name, **change) -> str:
        (tmp_path / name).write_text(json.dumps({**base, **change}))
        return str(tmp_path / name)

    sens = tmp_path / "sens.json"
    stage = {"keep_ratios": [0.5, 1.0], "accuracy": [60.0, 70.0]}
    sens.write_text(json.dumps({"schema": "edgeprune.sensitivity", "dense": 70.0,
                                "stages": {str(b): stage for b in range(12)}}))  # fmt: skip
    pred = ["predict", tiny_ckpt, "--heads", 2, "--profile", t, "--budget"]
    export = ["export", tiny_ckpt, "--heads", 2, "--out", tmp_path / "m.onnx", "--budget"]
    tome = ["budget", "--profile", t, "--method", "tome", "--target-ms", 4]
    cases = {
        "more than exist": (
            [*pred, budget("a.json", r_schedule=[99] + [0] * 11)],
            "merges 99 tokens in block 0, where only 98 of its 197 can merge",
        ),
        "more than are left": (
            [*pred, budget("c.json", r_schedule=[98, 50] + [0] * 10)],
            "merges 50 tokens in block 1, where only 49 of its 99 can merge",
        ),
        "export too": (
            [*export, budget("d.json", r_schedule=[8] * 11 + [99])],
            "merges 99 tokens in block 11",
        ),
        "length": ([*pred, budget("e.json", r_schedule=[8] * 11)], "has 11 entries"),
        "negative": ([*pred, budget("f.json", r_schedule=[-1] * 12)], "not valid"),
        "not tome": ([*pred, budget("g.json", method="evit")], "only for them"),
        "no schedule": ([*pred, budget("h.json", r_schedule=None)], "only for them"),
        "and --tome-r": ([*export, good, "--tome-r", 8], "--budget sets ToMe's r schedule"),
        "locs": ([*tome, "--locs", "1,2", "--out", tmp_path / "o.json"], "no --locs"),
        "sensitivity": (
            [*tome, "--sensitivity", sens, "--out", tmp_path / "o.json"],
            "ToMe's schedules are over r",
        ),
        "another method's table": (
            [*tome[:-4], "--method", "evit", "--target-ms", 4, "--out", tmp_path / "o.json"],
            "measured for method tome, but the model is evit",
        ),
    }
    before = set(tmp_path.rglob("*"))
    for name, (args, needle) in cases.items():
        code, _, err = cli(*args)
        assert code == 2, (name, code, err)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert needle in lines[0], (name, lines[0])
    assert set(tmp_path.rglob("*")) == before


# ---- validate-profile ---------------------------------------------------------------------
def test_validate_profile_times_tome_r_schedules(cli, tmp_path, monkeypatch):
    """validate-profile weighs ToMe's r schedules (each exported and timed as the other
    methods' are; here the timing is a stand-in, 1.2 × the closed form)."""
    timed = []

    def fake_time(sources, runtime, threads, batch, **kw):
        timed.extend(sources)
        return [Timing.from_samples([1.2 * closed_ms(r_of(s.plan))] * 3) for s in sources]

    monkeypatch.setattr(validate, "time_sources", fake_time)
    t = tmp_path / "t.json"
    table(runtime="onnxruntime").save(t)
    code, out, err = cli("validate-profile", t, "--configs", 6, "--plot", tmp_path / "v.png",
                         "--json")  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    rs = [tuple(r["r_schedule"]) for r in d["results"]]
    assert len(rs) == 6 and rs == [r_of(s.plan) for s in timed]
    assert rs[0] == as_run([2] * DEPTH) and rs[1] == as_run([16] * DEPTH)  # the corners
    shapes = family("free") | {as_run(tome_parse_r(DEPTH, r, f / 100))
                               for r in range(1, 25) for f in range(-100, 101)}  # fmt: skip
    assert all(r in shapes for r in rs)
    for r, res in zip(rs, d["results"], strict=True):
        assert res["predicted_ms"] == pytest.approx(closed_ms(r))
        assert res["rel_error"] == pytest.approx(1 / 6)
    assert d["median_rel_error"] == pytest.approx(1 / 6)
    rep = validate.validate_profile(LatencyModel(table(runtime="onnxruntime")), configs=2)
    assert "r per block" in [c.header for c in validation_table("t", rep).columns]


def r_of(plan) -> tuple[int, ...]:
    return tuple(a - m for a, m in zip(plan.attn_tokens, plan.mlp_tokens, strict=True))


# ---- budget --verify ------------------------------------------------------------------------
def slower(rs) -> float:
    """The fake machine: 1.3 × the table's closed form."""
    return 1.3 * closed_ms(rs)


class FakeModels:
    """``LocalModels`` on a fake machine: a "loaded" model is its source, timed at
    ``truth`` of its r per block (default ``slower``)."""

    loaded: list = []
    truth = staticmethod(slower)

    def __init__(self, runtime, threads, batch, progress=None, kernels=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def load(self, source, label):
        FakeModels.loaded.append((source, label))
        return source.plan

    def time(self, runners, rounds=30, burst=3):
        return [Timing.from_samples([FakeModels.truth(r_of(p))] * 3) for p in runners]


def test_verify_measures_the_tome_choice_against_dense():
    model = LatencyModel(table(runtime="onnxruntime"))
    target = 0.5 * 1.3 * closed_ms((0,) * DEPTH)
    choose = partial(search, model, target, "tome", "free")
    FakeModels.loaded, FakeModels.truth = [], staticmethod(slower)
    res, v = verify_budget(model, choose, None, rounds=3, models=FakeModels)
    # re-anchored on dense (× 1.3): the choice is the best r schedule on the machine itself
    want = brute_force("free", target, lambda s: 1.3 * closed_ms(s))
    assert res.chosen.r_schedule == want and v.met
    assert v.reanchor.scale == pytest.approx(1.3)
    assert v.reanchor.choice["r_schedule"] == list(want)
    assert v.measured_ms == pytest.approx(1.3 * closed_ms(want))
    assert v.dense_measured_ms == pytest.approx(1.3 * closed_ms((0,) * DEPTH))
    (dense, _), (pick, label) = FakeModels.loaded[:2]
    assert dense.method.name == "dense" and pick.method.name == "tome"
    assert r_of(pick.plan) == want and f"r {list(want)}" in label
    # without re-anchoring the table's own pick (too slow here) is measured and missed
    res0 = choose()
    _, v0 = verify_budget(model, choose, res0, rounds=3, reanchor=False, models=FakeModels)
    assert not v0.met and res0.chosen.r_schedule == brute_force("free", target)


def test_a_tome_budget_replaces_keep_ratios_in_the_file(tmp_path):
    """The budget file of a ToMe search records its r schedule; made for dense, none."""
    t = tmp_path / "t.json"
    table().save(t)
    run = make_budget(BudgetRequest(profile=t, target_ms=100.0, out=tmp_path / "d.json",
                                    no_plot=True, margin="0"))  # fmt: skip
    assert run.result.status == "dense" and run.data["r_schedule"] is None
    assert run.data["method"] == "dense" and load_budget(run.path).r_schedule is None
    src = resolve_with_budget("deit_tiny", run.path)
    assert src.method.name == "dense"
    run = make_budget(BudgetRequest(profile=t, target_ms=6.0, out=tmp_path / "b.json",
                                    no_plot=True, margin="0"))  # fmt: skip
    rs = tuple(run.data["r_schedule"])
    assert rs == brute_force("geometric", 6.0)
    assert rs == as_run([rs[0]] * DEPTH)  # geometric: one constant r, clamped as ToMe does


def test_verify_refines_a_tome_pick_on_its_own_measurement():
    """A machine whose blocks cost more at many tokens than the table says (no one scale
    fits): the re-anchored pick misses, the refinement re-picks r schedules on their
    own measurements and verifies one measured under the target."""

    def convex(rs) -> float:
        n, extra = N0, 0.0
        for r in rs:
            extra += 4e-5 * n * n
            n -= r
        return closed_ms(rs) + extra

    model = LatencyModel(table(runtime="onnxruntime"))
    target = 0.55 * convex((0,) * DEPTH)
    FakeModels.loaded, FakeModels.truth = [], staticmethod(convex)
    choose = partial(search, model, target, "tome", "free")
    res, v = verify_budget(model, choose, None, rounds=3, models=FakeModels)
    assert v.met and v.measured_ms == pytest.approx(convex(res.chosen.r_schedule))
    tried = [v.refined["first"], *v.refined["tries"]]
    assert len(tried) >= 2 and all("r_schedule" in t for t in tried)
    assert len({tuple(t["r_schedule"]) for t in tried}) == len(tried)  # never one twice
    assert res.chosen.r_schedule in {tuple(t["r_schedule"]) for t in tried}
