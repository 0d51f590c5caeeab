"""REPORT.md's sections but the speedups (report_speed.py): fidelity to each method's
code (tests/golden/ and tests/test_golden.py), the latency model's error, budgets met,
export times and accuracy, each from the files that record it."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from report_data import Run, Section, newest, signed, spec_order, table


def rel(path: Path, results: Path) -> str:
    """``path`` as a link target from the results folder, where REPORT.md lives."""
    return Path(os.path.relpath(path, results)).as_posix()


def _golden_rows(golden: Path, results: Path) -> list[list[str]]:
    rows = []
    for meta_path in sorted(golden.glob("*/meta.json")):
        m = json.loads(meta_path.read_text())
        d = meta_path.parent
        repo = m["repository"].removeprefix("https://github.com/")
        files = [meta_path, d / "expected.pt", d / m["checkpoint"]]
        rows.append(
            [
                d.name,
                f"{repo} @ {m['commit'][:10]}: `{m['official_file']}`, {m['class']}",
                m["path"],
                m["compare"],
                f"torch {m.get('torch', '?')}, timm {m.get('timm', '?')}",
                " · ".join(f"[{p.name}]({rel(p, results)})" for p in files),
            ]
        )
    return rows


def _constants(tree: ast.Module) -> list[str]:
    """Module-level numbers (tolerances) and the keys of module-level dict literals."""
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        name = getattr(node.targets[0], "id", None)
        if name is None:
            continue
        if isinstance(node.value, ast.Constant) and type(node.value.value) in (int, float):
            out.append(f"`{name}` = {node.value.value!r}")
        elif isinstance(node.value, ast.Dict):
            keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            out.append(f"`{name}`: {', '.join(map(str, keys))}")
    return out


def golden_tests(test_file: Path) -> list[str]:
    """Each test of ``test_file``: how it is parametrised, what it says it checks, and
    its assertions as written."""
    src = test_file.read_text()
    tree = ast.parse(src)
    lines = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        params = [ast.get_source_segment(src, d) for d in node.decorator_list]
        doc = " ".join((ast.get_docstring(node) or "").split())
        asserts = [
            f"`{' '.join(ast.get_source_segment(src, a.test).split())}`"
            for a in ast.walk(node)
            if isinstance(a, ast.Assert)
        ]
        head = f"- `{node.name}`" + "".join(f" (`@{p}`)" for p in params)
        lines.append(head + (f": {doc}" if doc else ""))
        lines.append("  asserts " + "; ".join(asserts) + ".")
    consts = _constants(tree)
    if consts:
        lines.append("- Module constants: " + "; ".join(consts) + ".")
    return lines


def fidelity(golden: Path, test_file: Path, results: Path) -> Section:
    sec = Section("1. Fidelity to each method's own code")
    doc = " ".join((ast.get_docstring(ast.parse(test_file.read_text())) or "").split())
    inputs, maker = rel(golden / "input.pt", results), rel(golden / "make_golden.py", results)
    sec.add(
        f"[{test_file.name}]({rel(test_file, results)}): {doc}",
        "",
        f"The fixtures (the inputs [input.pt]({inputs}), written by [make_golden.py]({maker})), "
        "per method, as their meta.json records them:",
        "",
        *table(
            [
                "method",
                "authors' code",
                "reference inference",
                "compared",
                "authors' side ran",
                "fixture",
            ],
            _golden_rows(golden, results),
        ),
        "",
        f"What [{test_file.name}]({rel(test_file, results)}) checks:",
        "",
        *golden_tests(test_file),
        "",
        "These are assertions of the test suite, not recorded runs: they hold wherever "
        "`pytest tests/test_golden.py` passes. The fixtures record the authors' side "
        "(torch, timm); the machine that wrote them is not recorded.",
    )
    return sec


def _profile_key(run: Run, r: dict) -> tuple:
    return (r["arch"], r["method"], r["threads"])


def _latency_rows(sec: Section, runs: list[Run]) -> list[list[str]]:
    picked = newest([(run, r) for run in runs for r in run.data["rows"]], _profile_key)
    picked.sort(key=lambda p: (spec_order(p[1]["arch"]), p[1]["threads"]))
    rows = []
    for run, r in picked:
        v, noise = r["validate"], r.get("noise") or {}
        dc = v.get("drift_corrected")
        rows.append(
            [
                f"{r['arch']}/{r['method']}",
                str(r["threads"]),
                "" if "median_spread" not in noise else f"{noise['median_spread']:.1%}",
                str(v["configs"]),
                f"{v['median_rel_error']:.1%}",
                f"{v['p90_rel_error']:.1%}",
                f"{v['max_rel_error']:.1%}",
                f"{v['within_10pct']}/{v['configs']}",
                signed(v.get("drift")),
                "" if not dc else f"{dc['median_rel_error']:.1%} / {dc['p90_rel_error']:.1%}",
                sec.cite(run),
            ]
        )
    return rows


def _reproduce_error_rows(sec: Section, runs: list[Run]) -> list[list[str]]:
    items = [(run, r) for run in runs for r in run.data.get("model_error", [])]
    picked = newest(items, lambda run, r: (r["profile"], r["threads"]))
    return [
        [
            r["profile"].removesuffix(" profile"),
            str(r["threads"]),
            str(r["configs"]),
            f"{r['median_rel_error']:.1%}",
            f"{r['p90_rel_error']:.1%}",
            signed(r.get("drift")),
            sec.cite(run),
        ]
        for run, r in sorted(picked, key=lambda p: p[1]["profile"])
    ]


def latency_model(runs: dict[str, list[Run]]) -> Section:
    sec = Section("3. Latency-model error")
    sec.add(
        "latency_model.py runs what a user runs: `edgeprune profile` (the latency table), then "
        "`edgeprune validate-profile`: random schedules of the method, each exported and timed "
        "against its prediction. Error = |predicted − measured| / measured. *Drift*: the "
        "profile's own whole-model anchors re-timed during validation against when they were "
        "profiled (the machine's change of speed, part of the error); the last column takes "
        "it out. *Profile noise*: median spread of the table's repeated passes. Newest run per "
        "arch, method and threads.",
        "",
        *table(
            [
                "profile",
                "threads",
                "profile noise",
                "schedules",
                "median error",
                "p90 error",
                "worst",
                "within ±10 %",
                "drift since profiling",
                "error with the drift taken out (median / p90)",
                "run",
            ],
            _latency_rows(sec, runs["latency_model"]),
        ),
        "",
        "reproduce.py's check, on profiles it measures itself (fewer schedules). Newest run "
        "per profile and threads:",
        "",
        *table(
            ["profile", "threads", "schedules", "median error", "p90 error", "drift", "run"],
            _reproduce_error_rows(sec, runs["reproduce"]),
        ),
    )
    return sec


def _budget_rows(sec: Section, runs: list[Run]) -> tuple[list[list[str]], int]:
    items = [(run, (r, b)) for run in runs for r in run.data["rows"] for b in r["budgets"]]
    picked = newest(items, lambda run, rb: (*_profile_key(run, rb[0]), rb[1]["fraction"]))
    picked.sort(
        key=lambda p: (spec_order(p[1][0]["arch"]), p[1][0]["threads"], p[1][1]["fraction"])
    )
    rows, met = [], 0
    for run, (r, b) in picked:
        head = [
            f"{r['arch']}/{r['method']}",
            str(r["threads"]),
            f"{b['fraction']:.2f}",
            f"{b['target_ms']:.2f}",
        ]
        if "measured_ms" not in b:
            rows.append(
                head + ["", "", "", f"no: {b.get('error', 'not verified')}", "", "", sec.cite(run)]
            )
            continue
        met += bool(b.get("met"))
        rows.append(
            head
            + [
                f"{b['predicted_ms']:.2f}",
                f"{b['measured_ms']:.2f}",
                signed(b.get("vs_target")),
                "yes" if b.get("met") else "no",
                signed(b.get("moved")),
                signed(b.get("at_anchor_vs_target")),
                sec.cite(run),
            ]
        )
    return rows, met


def _spvit_budget_rows(sec: Section, runs: list[Run]) -> list[list[str]]:
    rows = []
    for run in sorted(runs, key=lambda r: (r.date, r.name))[-1:]:
        rt = run.data.get("spvit_realtime")
        if not rt:
            continue
        b = rt["budget"]
        meas, target = b["measured_ms"]["median"], b["target_ms_same_run"]
        rows.append(
            [
                "deit_tiny:spvit, `free` schedule",
                "1",
                f"{target:.2f}",
                ", ".join(f"{x:.3f}" for x in b["keep_ratios"]),
                f"{b['predicted_ms']:.2f}",
                f"{meas:.2f}",
                signed(meas / target - 1),
                "yes" if meas <= target else "no",
                sec.cite(run),
            ]
        )
    return rows


def budgets(runs: dict[str, list[Run]]) -> Section:
    sec = Section("4. Budgets met")
    rows, met = _budget_rows(sec, runs["latency_model"])
    sec.add(
        "latency_model.py's `edgeprune budget --verify` at fractions of the table's dense "
        "prediction: the chosen schedule is exported and timed against dense, interleaved; "
        "met = measured median ≤ target. *Machine moved*: dense beside the pick against dense "
        "at the re-anchor; the last column is the pick at the re-anchor's speed. Newest run "
        "per arch, method, threads and fraction.",
        "",
        *table(
            [
                "profile",
                "threads",
                "target (× dense)",
                "target ms",
                "predicted ms",
                "measured ms",
                "measured vs target",
                "met",
                "machine moved during the check",
                "at the re-anchor's speed vs target",
                "run",
            ],
            rows,
        ),
        "",
        f"Met: {met} of {len(rows)}.",
        "",
        "reproduce.py's budget: SPViT DeiT-T for 26/44 of the dense latency measured in the same "
        "run (the paper's 44 → 26 ms), on a profile of that machine; measured in bursts of 3, "
        "the first dropped. Newest run:",
        "",
        *table(
            [
                "model",
                "threads",
                "target ms",
                "keep ratios",
                "predicted ms",
                "measured ms",
                "measured vs target",
                "met",
                "run",
            ],
            _spvit_budget_rows(sec, runs["reproduce"]),
        ),
    )
    return sec


def _export_rows(sec: Section, runs: list[Run]) -> list[list[str]]:
    items = [(run, r["spec"]) for run in runs for r in run.data["rows"]]
    picked = newest(items, lambda run, spec: (spec, bool(run.meta.get("custom_kernels"))))
    picked.sort(key=lambda p: (bool(p[0].meta.get("custom_kernels")), spec_order(p[1])))
    rows = []
    for run, spec in picked:
        for r in (r for r in run.data["rows"] if r["spec"] == spec):
            e = r["export_seconds"]
            rows.append(
                [
                    spec,
                    "yes" if run.meta.get("custom_kernels") else "no",
                    str(r["run"] + 1),
                    f"{r['wall_s']:.1f}",
                    f"{e['export']:.1f}",
                    f"{e['lower']:.1f}",
                    f"{e['serialize']:.1f}",
                    str(r["segments"]),
                    sec.cite(run),
                ]
            )
    return rows


def exports(runs: dict[str, list[Run]]) -> Section:
    sec = Section("5. Export times")
    items = [(run, r) for run in runs["reproduce"] for r in run.data.get("export_cost", [])]
    onnx = newest(items, lambda run, r: (r["spec"], r["batch"]))
    onnx.sort(key=lambda p: (p[1]["batch"], spec_order(p[1]["spec"])))
    sec.add(
        "export_time.py: `edgeprune export SPEC --target executorch` as its own command, timed "
        "from outside (imports, torch.export, lowering, serialisation and the 16-input parity "
        "check); the middle columns are the manifest's split, in seconds. Newest run per spec "
        "and --custom-kernels; every repeat of that run.",
        "",
        *table(
            [
                "spec",
                "--custom-kernels",
                "repeat",
                "command wall s",
                "torch.export + rewrites",
                "lowering",
                "serialise",
                "XNNPACK segments",
                "run",
            ],
            _export_rows(sec, runs["export_time"]),
        ),
        "",
        "reproduce.py: ONNX export inside one process (tracing, simplification and the parity "
        "check), wall seconds. Newest run per model and batch:",
        "",
        *table(
            ["model", "batch", "ONNX export s", "run"],
            ([r["spec"], str(r["batch"]), f"{r['seconds']:.1f}", sec.cite(run)] for run, r in onnx),
        ),
    )
    return sec


def accuracy(runs: dict[str, list[Run]]) -> Section:
    sec = Section("6. Accuracy")
    if not runs["accuracy"]:
        sec.add(
            "No result file covers accuracy: no benchmark in this folder measured top-1 (or any "
            "other accuracy) of a pruned model on a dataset. Section 1 covers agreement with "
            "each method's own code on the golden inputs; that is fidelity, not accuracy."
        )
        return sec
    sec.add("Accuracy result files (their own tables are in each .md):", "")
    sec.add(*(f"- {sec.cite(run)}" for run in sorted(runs["accuracy"], key=lambda r: r.date)))
    return sec


def repeatability(runs: dict[str, list[Run]]) -> Section:
    sec = Section("7. One number, measured again")
    if not runs["bench_spread"]:
        sec.add("No result file covers the repeatability of `edgeprune bench` yet.")
        return sec
    sec.add(
        "bench_spread.py: `edgeprune bench ARTIFACT --json` run again and again, each a fresh "
        "process, in three settings: the machine as it was (quiet), a CPU-burning process "
        "per core throughout (load), and that load ended a few seconds after each bench "
        "started with `--wait-quiet` (wait-quiet). *Spread*: (max − min) / median of the "
        "repeated medians, the goal on a quiet machine ≤ 2 %; *CI ±*: the median run's 95 % "
        "interval half-width; *converged*: runs whose interval reached the tolerance; "
        "*warned*: runs that printed the busy-machine warning; *reference* (where a run has "
        "it): a numpy matmul loop with no edgeprune in it, a fresh process after each quiet "
        "bench, timed as long, pinned alike: the machine's own spread from one process to "
        "the next, which no bench can undercut. Every run, with the bench options it passed:",
        "",
        *table(
            [
                "setting",
                "bench options",
                "median of medians",
                "spread",
                "CI ±",
                "converged",
                "warned",
                "run",
            ],
            (
                [
                    name,
                    "numpy matmul, no edgeprune"
                    if s.get("reference")
                    else " ".join(run.meta.get("bench_args", [])),
                    f"{s['median_of_medians_ms']:.3f} ms",
                    f"{s['spread']:.1%}",
                    "—" if s["ci_halfwidth_median"] is None else f"{s['ci_halfwidth_median']:.1%}",
                    "—" if s.get("reference") else f"{s['converged']}/{s['repeats']}",
                    "—" if s.get("reference") else f"{s['warned']}/{s['repeats']}",
                    sec.cite(run),
                ]
                for run in sorted(runs["bench_spread"], key=lambda r: (r.date, r.name))
                for name, s in run.data["summary"].items()
            ),
        ),
    )
    return sec
