"""How strong are the tests of the numeric core? Mutation testing with mutmut.

    python benchmarks/mutation.py [--module plan_flops,latency_model,...] [--phase after]
        [--fuzz-cases 25] [--timeout-multiplier 6] [--max-minutes 40] [--workdir DIR]
        [--collect] [--note TEXT] [--merge FILE...] [--out DIR] [--name mutation]

mutmut makes many small wrong versions of the code (``+`` for ``-``, ``<`` for ``<=``, a
constant off by one, an argument dropped, a string changed) and runs the tests that
cover each changed function against it: a mutant the tests fail on is *killed*, one they
pass on *survived*. The score is killed (timeouts included: the change made the tests
hang) over all mutants, so a mutant no selected test reaches counts against it.

One run per module of the numeric core (``MODULES``): its functions (whole files, or
the listed functions of a file) and a FAST pure-python test selection that reaches them
(no export, no runtime: those tests cost minutes per mutant). Each module runs in a
fresh copy of the tree under ``--workdir`` (default: a temporary folder): mutmut writes
its ``mutants/`` there, never in the checkout. Before mutmut starts, the selection is
run once on the unmutated code and must pass.

Economical with the CPU: one mutmut worker, torch on one thread, the fuzz tests at
``--fuzz-cases`` cases (EDGEPRUNE_FUZZ_CASES), and a per-mutant limit of
``(time of its tests + 2 s) × 6`` seconds of wall clock, twice that of CPU (mutmut's
timeout_constant and ``--timeout-multiplier``: generous, as the machine may be shared;
a mutant that runs past it counts as killed, as in mutmut, and is counted apart);
hypothesis does not shrink the failing example of a killed mutant (``PLUGIN``).

Writes benchmarks/results/<name>.json and .md: per module and ``--phase`` ("before": the
suite before the tests written to kill survivors, "after": with them) the mutants
total / killed / survived / timeout / no tests, the score, and every surviving mutant
with its diff and an explanation (``EXPLAINED``: equivalent mutants, and why); the
other phase already in the file is kept. ``--collect`` re-reads the verdicts of an earlier
run kept in ``--workdir`` (after ``mutmut run NAMES`` there re-ran some mutants, say so
with ``--note``); ``--merge`` joins the modules of results files written by runs made in
separate processes. Needs the ``mutation`` extra
(``pip install -e .[mutation]``). Not part of the test run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import fnmatch
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from timing import host_meta, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# mapped into the package by [tool.setuptools] package-dir: copied inside edgeprune/ in
# the work tree, so the copy imports without the editable install's mapping
MAPPED = {"export": "export", "runtimes": "runtimes", "profiles": "profiles"}
THRESHOLD = 0.85  # the goal: at least 85 % of mutants killed per module
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no_tests", 33: "no_tests"}
STATUS |= {c: "timeout" for c in (24, -24, 36, 152, 255)}


@dataclass(frozen=True, kw_only=True)
class Target:
    """One module of the numeric core: the functions mutated and the tests run on them.

    ``functions``: per file, fnmatch patterns of ``name`` / ``Class.method`` to mutate
    (``*``: the whole file); ``skip``: patterns left out (with ``why``)."""

    functions: dict[str, tuple[str, ...]]
    skip: tuple[str, ...] = ()
    why: str = ""
    tests: tuple[str, ...]


# the pure-python tests every module's selection may draw on (absent ones are left out)
LATENCY = "tests/test_latency.py"
REF_LATENCY = "tests/test_references_latency.py"
REF_BUDGET = "tests/test_references_budget.py"
NEW_TESTS = "tests/test_strength_"  # written to kill survivors: left out of "before"

MODULES: dict[str, Target] = {
    "plan_flops": Target(
        functions={"edgeprune/core/plan.py": ("*",), "edgeprune/core/flops.py": ("*",)},
        tests=(
            "tests/test_plan_flops.py",
            LATENCY,
            REF_LATENCY,
            "tests/test_strength_plan_flops.py",
        ),
    ),
    "latency_model": Target(
        functions={
            "edgeprune/latency/model.py": ("*",),
            "edgeprune/latency/table.py": ("piecewise_linear", "Curve.at"),
        },
        skip=("load_model", "predict_source"),
        why="load_model and predict_source read a profile file and assemble the CLI's "
        "record: file reading is fuzzed and schema-checked by its own tests",
        tests=(LATENCY, REF_LATENCY, "tests/test_strength_latency_model.py"),
    ),
    "budget_search": Target(
        functions={"edgeprune/budget/search.py": ("*",)},
        skip=(
            "load_sensitivity",
            "indistinct",
            "_file_indistinct",
            "_unreachable",
            "fmt_ratios",
            "measured_curves",
            "chosen_summary",
            "Sensitivity.measured_range",
            "Sensitivity.check_locs",
            "BudgetResult.gflops",
        ),
        why="file reading (load_sensitivity, schema-checked and fuzzed elsewhere), the "
        "chance-level diagnosis of a sensitivity file, and the wording of messages and "
        "plot summaries: not the search",
        tests=(
            LATENCY,
            REF_BUDGET,
            "tests/test_trust.py::test_extrapolation_reads_the_first_segment_down_never_up",
            "tests/test_trust.py::test_unreachable_names_the_range_only_when_it_kept_to_one",
            "tests/test_hostile_files.py::test_a_non_finite_predicted_accuracy_is_refused_not_returned",
            "tests/test_strength_budget_search.py",
            # minutes per run at the deit_tiny grid: far too slow to run per mutant
            "--deselect",
            f"{REF_BUDGET}::test_fuzz_budget_free_deit_within_its_resolution",
        ),
    ),
    "keep_counts": Target(
        functions={
            "edgeprune/core/methods/base.py": (
                "Method.make_plan",
                "PredictorMethod.kept_patches",
                "StaticTopKViT.patches_kept",
                "geometric",
            ),
            "edgeprune/core/methods/dense.py": ("Dense.token_plan",),
            "edgeprune/core/methods/dynamicvit.py": ("DynamicViT.token_plan",),
            "edgeprune/core/methods/spvit.py": ("SPViT.token_plan",),
            "edgeprune/core/methods/evit.py": ("evit_keep", "EViT.token_plan"),
            "edgeprune/core/methods/avit.py": ("AViT.token_plan",),
            "edgeprune/core/methods/tome.py": ("merge_plan", "ToMe.config_for", "ToMe.token_plan"),
        },
        why="where keep ratios (ToMe: merge counts) become the token counts of the plan; "
        "the models' forward code in the same files is not mutated",
        tests=(
            "tests/test_plan_flops.py",
            REF_LATENCY,
            "tests/test_methods_static.py",
            "tests/test_strength_keep_counts.py",
        ),
    ),
    "loss": Target(
        functions={"edgeprune/training/loss.py": ("*",)},
        tests=(LATENCY, "tests/test_strength_loss.py"),
    ),
}

# Surviving mutants that no test can kill, with why: the mutant's name, a piece of its
# diff's "+" line (the explanation is applied only while the mutant still is that
# change), and the reason.
_STRICT = (
    "zip of a plan's attention and MLP counts: TokenPlan refuses counts that are not one "
    "per block for both, so the lengths are always equal and strict never decides"
)
_CPU = (
    "only the device: every tensor here is on the CPU, where device=None puts it too "
    "(it matters on an accelerator, which this run has none of)"
)
_NO_SELECTORS = (
    "reached only when the plan has no selectors: selector_in is then an empty tensor, "
    "and any factor of it is empty"
)
_ARRAY = (
    "np.asarray of a list of numbers: float64 for floats; for ints, polyfit and the true "
    "division after it compute the same numbers"
)
_EDGE = (
    "the edge of the plausibility window of a least-squares fit (a scale of exactly 0.5 "
    "or 2.0, an offset of exactly half the smallest anchor): the fit's floating point "
    "result cannot be made to land exactly there on every machine"
)
_FALSY = "corrected=None is as falsy as corrected=False: the correction is left out alike"
_ANCHORS = "rows and raw are built from the same anchors: equally long, strict never decides"
_ROUND = (
    "the ratios are integer multiples of steps of at most 3 decimals (0.005 … 0.5): "
    "rounded to 6 or 7 digits they are the same float"
)
_STEP_FITS = (
    "the fallback step is never used by a cumulative method (n + 1 schedules at step "
    "0.5) and only past 14 locations by a per-stage one (2ⁿ > 25 000)"
)
_ABOVE = (
    "a ratio above 1 keeps every token: the plan of 1.0 (known, left out) or refused (EViT, SPViT)"
)
_PAIRS = "zip(t, t[1:]) is one shorter by construction: strict was already off"
_LAYOUT = (
    "the loss's plan gives the layout only (which blocks each stage feeds): any schedule "
    "that prunes at every stage gives the same one"
)
_SAME_LIST = "the predictions are made from the same candidates, one each: equally long"
_CHECKED = "masks and ratios are checked to be as many just before: strict never decides"
EXPLAINED: dict[str, tuple[str, str]] = {
    "edgeprune.core.flops.x_plan_flops__mutmut_18": ("strict=None", _STRICT),
    "edgeprune.core.flops.x_plan_flops__mutmut_21": ("plan.mlp_tokens, )", _STRICT),
    "edgeprune.core.flops.x_plan_flops__mutmut_22": ("strict=False", _STRICT),
    "edgeprune.latency.model.xǁLatencyModelǁcomponents__mutmut_44": (
        "if (n_sel) or True",
        "selector_curve returns None for 0 selectors, which is what the else gives",
    ),
    "edgeprune.latency.model.xǁLatencyModelǁcomponents__mutmut_46": (
        'selector_curve(method or "", None)',
        "reached with n_sel > 0 only, where selector_curve reads its count only as == 0",
    ),
    "edgeprune.latency.model.xǁLatencyModelǁcomponents__mutmut_59": (
        "selector_in / 0.0",
        _NO_SELECTORS,
    ),
    "edgeprune.latency.model.xǁLatencyModelǁcomponents__mutmut_60": (
        "selector_in * 1.0",
        _NO_SELECTORS,
    ),
    "edgeprune.latency.model.xǁLatencyModelǁpredict_tokens__mutmut_32": ("device=None", _CPU),
    "edgeprune.latency.model.xǁLatencyModelǁpredict_tokens__mutmut_35": (")", _CPU),
    "edgeprune.latency.table.x_piecewise_linear__mutmut_5": ("device=None", _CPU),
    "edgeprune.latency.table.x_piecewise_linear__mutmut_8": ("dtype=x.dtype, )", _CPU),
    "edgeprune.latency.table.x_piecewise_linear__mutmut_12": ("device=None", _CPU),
    "edgeprune.latency.table.x_piecewise_linear__mutmut_15": ("dtype=x.dtype, )", _CPU),
    "edgeprune.latency.model.x_fit_correction__mutmut_13": ("asarray(raw_ms, None)", _ARRAY),
    "edgeprune.latency.model.x_fit_correction__mutmut_15": ("asarray(raw_ms, )", _ARRAY),
    "edgeprune.latency.model.x_fit_correction__mutmut_17": ("asarray(measured_ms, None)", _ARRAY),
    "edgeprune.latency.model.x_fit_correction__mutmut_19": ("asarray(measured_ms, )", _ARRAY),
    "edgeprune.latency.model.x_fit_correction__mutmut_37": ("0.5 < b <= 2.0", _EDGE),
    "edgeprune.latency.model.x_fit_correction__mutmut_38": ("0.5 <= b < 2.0", _EDGE),
    "edgeprune.latency.model.x_fit_correction__mutmut_41": ("abs(a) < 0.5 * y.min()", _EDGE),
    "edgeprune.latency.model.x_fit_end_to_end__mutmut_3": ("corrected=None", _FALSY),
    "edgeprune.latency.model.xǁLatencyModelǁuncorrected__mutmut_3": ("corrected=None", _FALSY),
    "edgeprune.latency.model.x_fit_end_to_end__mutmut_47": ("strict=None", _ANCHORS),
    "edgeprune.latency.model.x_fit_end_to_end__mutmut_50": ("zip(rows, raw, )", _ANCHORS),
    "edgeprune.latency.model.x_fit_end_to_end__mutmut_51": ("strict=False", _ANCHORS),
    "edgeprune.budget.search.x_resolve_margin__mutmut_5": (
        '(text or "AUTO")',
        "the text is lower-cased right after: AUTO and auto are the same default",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁgeometric__mutmut_16": (
        "range(1, 1002)",
        "r = 1.001 gives the token counts of r = 1.0 (int(196·1.001) = 196; EViT and SPViT "
        "refuse it), and candidates with the same counts keep the first schedule seen",
    ),
    "edgeprune.budget.search.xǁSensitivityǁpredict_many__mutmut_25": (
        "extrapolate=None",
        "None is as falsy as False: the curve is held at its ends alike",
    ),
    "edgeprune.budget.search.xǁSensitivityǁpredict_many__mutmut_32": (
        "len(xs) >= 1",
        "a one-point curve extended is that point's value, capped at it: the value held",
    ),
    "edgeprune.budget.search.xǁSensitivityǁpredict_many__mutmut_50": (
        "r[:, j] <= xs[0]",
        "at the lowest ratio itself the extended segment and the curve give the same value",
    ),
    "edgeprune.budget.search.x__grid__mutmut_10": ("round(i * step, 7)", _ROUND),
    "edgeprune.budget.search.xǁ_Spaceǁ_around__mutmut_8": ("round(r + k * fine, 7)", _ROUND),
    "edgeprune.budget.search.xǁ_Spaceǁ_around__mutmut_24": ("k * fine, 7) <= 1", _ROUND),
    "edgeprune.budget.search.x_search__mutmut_2": (
        '"DYNAMICVIT"',
        "get_method reads method names case-insensitively",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁfree__mutmut_4": ("None,", _STEP_FITS),
    "edgeprune.budget.search.xǁ_Spaceǁfree__mutmut_6": (")", _STEP_FITS),
    "edgeprune.budget.search.xǁ_Spaceǁfree__mutmut_24": (
        "< MAX_FREE_CANDIDATES",
        "no grid of these steps has exactly 25 000 schedules",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁfree__mutmut_25": (
        "2.0,",
        "reached only by a per-stage method (EViT) at 15+ locations: a step of 1.0 gives "
        "the rate 1.0, which EViT refuses, 2.0 an empty grid: no candidate either way",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁfree__mutmut_44": (
        "10**n <= MAX_FREE_CANDIDATES",
        "9ⁿ and 10ⁿ are both within 25 000 for n ≤ 4 and both past it for n ≥ 5",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁfree__mutmut_45": (
        "9**n < MAX_FREE_CANDIDATES",
        "9ⁿ is never exactly 25 000",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁ_around__mutmut_25": (
        "k * fine, 6) < 1]",
        "ratio 1.0 is on every coarse grid: its plan is known already",
    ),
    "edgeprune.budget.search.xǁ_Spaceǁ_around__mutmut_26": ("<= 2]", _ABOVE),
    "edgeprune.budget.search.xǁ_Spaceǁ_around__mutmut_34": ("strict=None", _PAIRS),
    "edgeprune.budget.search.xǁ_Spaceǁ_around__mutmut_37": ("zip(t, t[1:], )", _PAIRS),
    "edgeprune.budget.search.x_kept_tokens__mutmut_6": ("strict=None", _STRICT),
    "edgeprune.budget.search.x_kept_tokens__mutmut_9": ("plan.mlp_tokens, ))", _STRICT),
    "edgeprune.budget.search.x_kept_tokens__mutmut_10": ("strict=False", _STRICT),
    "edgeprune.budget.search.x__evaluate__mutmut_18": ("strict=None", _SAME_LIST),
    "edgeprune.budget.search.x__evaluate__mutmut_21": ("ms.tolist(), )", _SAME_LIST),
    "edgeprune.budget.search.x__evaluate__mutmut_22": ("strict=False", _SAME_LIST),
    "edgeprune.budget.search.x__evaluate__mutmut_1": (
        "extrapolate=True",
        "every caller passes extrapolate: the default is never read",
    ),
    "edgeprune.budget.search.x__plans__mutmut_12": (
        "tuple(ratios), )",
        "MethodConfig's options default to {}: the same empty options",
    ),
    "edgeprune.training.loss.x__open__mutmut_10": (
        "is_budget = None",
        "None is as falsy as False: a file that is not JSON is read as a profile alike",
    ),
    "edgeprune.training.loss.xǁLatencyAwareSparsityLossǁ__init____mutmut_47": (
        "len(locs)) and False",
        _LAYOUT,
    ),
    "edgeprune.training.loss.xǁLatencyAwareSparsityLossǁ__init____mutmut_56": (
        "geometric(0.9, len(locs), )",
        _LAYOUT,
    ),
    "edgeprune.training.loss.xǁLatencyAwareSparsityLossǁ__init____mutmut_68": (
        "MethodConfig(locs, keep, )",
        "MethodConfig's options default to {}: the same empty options",
    ),
    "edgeprune.training.loss.x_ratio_mse__mutmut_7": ("strict=None", _CHECKED),
    "edgeprune.training.loss.x_ratio_mse__mutmut_10": ("zip(masks, ratios, )", _CHECKED),
    "edgeprune.training.loss.x_ratio_mse__mutmut_11": ("strict=False", _CHECKED),
    "edgeprune.training.loss.xǁLatencyAwareSparsityLossǁexpected_tokens__mutmut_16": (
        "m.sum(1).mean(None)",
        "m.sum(1) is one-dimensional (one count per image): its mean over axis 0 is its mean",
    ),
    "edgeprune.latency.table.x_piecewise_linear__mutmut_18": (
        "y[0] - 0.0 * x",
        "y0 − 0·x and y0 + 0·x are the same number (and the same zero gradient) for every x",
    ),
}


# ---- which mutants -------------------------------------------------------------------
def functions_of(path: Path) -> list[tuple[str, str]]:
    """(display name, mutmut's mangled name) of every function mutmut mutates in a file:
    top-level functions (``x_f``) and methods of top-level classes (``xǁCǁm``); mutmut
    leaves functions with decorators other than staticmethod/classmethod alone."""

    def plain(fn) -> bool:
        names = [d.id for d in fn.decorator_list if isinstance(d, ast.Name)]
        return not fn.decorator_list or (
            len(fn.decorator_list) == 1 and names in (["staticmethod"], ["classmethod"])
        )

    out = []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, defs) and plain(node):
            out.append((node.name, f"x_{node.name}"))
        elif isinstance(node, ast.ClassDef):
            for fn in node.body:
                if isinstance(fn, defs) and plain(fn):
                    out.append((f"{node.name}.{fn.name}", f"xǁ{node.name}ǁ{fn.name}"))
    return out


def selected(target: Target) -> dict[str, list[str]]:
    """Per file, the mangled names of the functions a module mutates."""
    out = {}
    for f, pats in target.functions.items():
        out[f] = [
            mangled
            for name, mangled in functions_of(ROOT / f)
            if any(fnmatch.fnmatch(name, p) for p in pats)
            and not any(fnmatch.fnmatch(name, s) for s in target.skip)
        ]
    return out


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def patterns(functions: dict[str, list[str]]) -> list[str]:
    return [f"{module_of(f)}.{m}__mutmut_*" for f, ms in functions.items() for m in ms]


# ---- the work tree -------------------------------------------------------------------
def tests_of(target: Target, phase: str) -> list[str]:
    """The module's test selection, less the files that do not exist (yet); for the
    "before" phase, less the tests written to kill its survivors (``NEW_TESTS``)."""
    out, skip_next = [], False
    for t in target.tests:
        if phase == "before" and t.startswith(NEW_TESTS):
            continue
        if skip_next or t.startswith("-"):
            out.append(t)
            skip_next = t.startswith("-")
            continue
        if (ROOT / t.split("::")[0]).exists():
            out.append(t)
    return out


# a pytest plugin for the copies: hypothesis does not shrink a failing example (a kill
# needs none, and shrinking re-runs a slow search hundreds of times: it made killed
# mutants run past their time limit). The tests' own settings (examples, seeds) stand.
PLUGIN = "mutation_hypothesis"
PLUGIN_CODE = """from hypothesis import Phase, settings

settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("mutation")
"""


def make_tree(work: Path, target: Target, tests: list[str], args) -> None:
    """A copy of the package (the mapped folders inside it), the tests and pyproject.toml
    with mutmut's settings for this module (and ``PLUGIN``)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "edgeprune", work / "edgeprune", ignore=ignore)
    for sub, src in MAPPED.items():
        shutil.copytree(ROOT / src, work / "edgeprune" / sub, ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    (work / f"{PLUGIN}.py").write_text(PLUGIN_CODE)
    conf = {
        "also_copy": [f"{PLUGIN}.py"],
        "source_paths": ["edgeprune"],
        "only_mutate": list(target.functions),
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", PLUGIN],
        "process_isolation": "forkserver",  # fork after torch's thread pools hangs
        "timeout_multiplier": args.timeout_multiplier,
        "timeout_constant": 2.0,
        "use_git_change_detection": False,
    }
    text = (ROOT / "pyproject.toml").read_text()
    text += "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in conf.items())
    (work / "pyproject.toml").write_text(text)


def env(args) -> dict:
    e = dict(os.environ)
    e.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        EDGEPRUNE_FUZZ_CASES=str(args.fuzz_cases),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return e


def run(cmd: list[str], cwd: Path, args, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` at low priority in its own process group; the whole group is killed when
    it runs past ``timeout`` seconds (then ``returncode`` is None)."""
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=lambda: os.nice(10),
    )  # fmt: skip
    try:
        out, err = p.communicate(timeout=max(1.0, timeout))
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return subprocess.CompletedProcess(cmd, None, out, err)


def mutmut_bin() -> str:
    exe = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if exe is None:
        raise SystemExit("mutmut is not installed: pip install -e .[mutation]")
    return exe


# ---- one module ------------------------------------------------------------------------
def verdicts(work: Path, functions: dict[str, list[str]]) -> dict[str, int | None]:
    """Exit code per mutant of the selected functions (mutmut's .meta files)."""
    pats = patterns(functions)
    out = {}
    for f in functions:
        meta = json.loads((work / "mutants" / (f + ".meta")).read_text())
        for name, code in meta["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, p) for p in pats):
                out[name] = code
    return out


def sources(work: Path, functions: dict[str, list[str]]) -> dict[str, str]:
    """The source of every original and mutated function in mutmut's copies, by the
    mutant's name (``<module>.<mangled>__mutmut_<N>``, ``…__mutmut_orig``)."""
    out = {}
    for f in functions:
        text = (work / "mutants" / f).read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
                body = lines[node.lineno - 1 : node.end_lineno]
                out[f"{module_of(f)}.{node.name}"] = "\n".join(body)
    return out


def survivor(name: str, status: str, src: dict[str, str]) -> dict:
    """A mutant that was not killed: its diff against the original, and why it cannot
    be killed where ``EXPLAINED`` says so (and the diff is still that change)."""
    base = name.rsplit("__mutmut_", 1)[0]
    orig, mutant = src.get(base + "__mutmut_orig", ""), src.get(name, "")
    mutant = mutant.replace(name.rsplit(".", 1)[1], base.rsplit(".", 1)[1] + "__mutmut_orig", 1)
    diff = [
        ln
        for ln in difflib.unified_diff(orig.splitlines(), mutant.splitlines(), lineterm="", n=1)
        if not ln.startswith(("---", "+++", "@@"))
    ]
    plus = [ln[1:] for ln in diff if ln.startswith("+")]
    piece, why = EXPLAINED.get(name, ("", ""))
    applies = bool(piece) and any(piece in ln for ln in plus)
    return {
        "mutant": name,
        "function": base.rsplit(".", 1)[1].removeprefix("x_").removeprefix("xǁ").replace("ǁ", "."),
        "status": status,
        "diff": "\n".join(diff),
        "explanation": why if applies else None,
    }


def mutate(name: str, work: Path, tests: list[str], functions, args) -> str:
    """The selection once on the unmutated code (it must pass), then mutmut; the tail
    of mutmut's output."""
    limit = args.max_minutes * 60
    t0 = time.monotonic()
    base = run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p",
                PLUGIN, *tests], work, args, limit)  # fmt: skip
    if base.returncode != 0:
        raise SystemExit(f"{name}: the test selection fails on the unmutated code:\n"
                         f"{base.stdout[-3000:]}{base.stderr[-2000:]}")  # fmt: skip
    cmd = [mutmut_bin(), "run", "--max-children", "1", *patterns(functions)]
    p = run(cmd, work, args, limit - (time.monotonic() - t0))
    if p.returncode is None:
        return f"stopped after {args.max_minutes} minutes: mutants not reached count as not run"
    return p.stdout[-1500:] + p.stderr[-1500:]


def run_module(name: str, target: Target, work: Path, args) -> dict:
    tests = tests_of(target, args.phase)
    functions = selected(target)
    t0 = time.monotonic()
    log = "collected from an earlier run (--collect)"
    if not args.collect:
        make_tree(work, target, tests, args)
        log = mutate(name, work, tests, functions, args)
    codes = verdicts(work, functions)
    counts = {k: 0 for k in ("killed", "survived", "timeout", "no_tests", "not_run", "other")}
    for code in codes.values():
        counts[STATUS.get(code, "not_run" if code is None else "other")] += 1
    total = len(codes)
    lost = [(n, STATUS.get(c, "other")) for n, c in sorted(codes.items(), key=_order)
            if STATUS.get(c) not in ("killed", "timeout")]  # fmt: skip
    src = sources(work, functions)
    survivors = [survivor(n, s, src) for n, s in lost]
    score = (counts["killed"] + counts["timeout"]) / total if total else 0.0
    return {
        "date": host_meta()["date"],
        "total": total,
        **counts,
        "score": round(score, 4),
        "explained": sum(1 for s in survivors if s["explanation"]),
        "meets_threshold": score >= THRESHOLD,
        "minutes": None if args.collect else round((time.monotonic() - t0) / 60, 1),
        "tests": tests,
        "functions": {
            f: [m.replace("ǁ", ".").removeprefix("x_") for m in ms] for f, ms in functions.items()
        },  # fmt: skip
        "note": args.note,
        "survivors": survivors,
        "log_tail": log if _troubled(log) else "",
    }


def _order(item: tuple[str, int | None]) -> tuple[str, int]:
    base, _, num = item[0].rpartition("__mutmut_")
    return base, int(num) if num.isdigit() else 0


def _troubled(log: str) -> bool:
    """Whether mutmut's output tail is worth keeping: it failed or was stopped."""
    return "Failed" in log or "stopped after" in log or "Traceback" in log


# ---- the results file ------------------------------------------------------------------
def lines_of(data: dict) -> list[str]:
    m = data["meta"]
    out = [
        "# Mutation testing of the numeric core",
        "",
        f"{m['tool']} {m['tool_version']}, {m['workers']} worker, fuzz tests at "
        f"{m['fuzz_cases']} cases; goal: at least {THRESHOLD:.0%} killed per module.",
        "",
        "| module | phase | mutants | killed | timeout | survived | no tests | not run | score "
        "| explained |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mod, phases in data["modules"].items():
        for ph in ("before", "after"):
            r = phases.get(ph)
            if r:
                out.append(
                    f"| {mod} | {ph} | {r['total']} | {r['killed']} | {r['timeout']} | "
                    f"{r['survived']} | {r['no_tests']} | {r['not_run']} | {r['score']:.1%} | "
                    f"{r['explained']} |"
                )
    left = [
        (mod, s)
        for mod, phases in data["modules"].items()
        for s in (phases.get("after") or {}).get("survivors", [])
    ]
    if left:
        out += ["", "## Surviving mutants (after)", ""]
        for mod, s in left:
            line = s["diff"].splitlines()
            change = next((ln[1:].strip() for ln in line if ln.startswith("+") and
                           not ln.startswith("+++")), "")  # fmt: skip
            why = s["explanation"] or "UNEXPLAINED"
            out.append(f"- {mod} `{s['mutant'].rsplit('.', 1)[1]}` (`{change}`): {why}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--module", default=",".join(MODULES), help="comma-separated modules")
    ap.add_argument("--phase", choices=("before", "after"), default="after")
    ap.add_argument("--fuzz-cases", type=int, default=25)
    ap.add_argument("--timeout-multiplier", type=float, default=6.0)
    ap.add_argument("--max-minutes", type=float, default=40.0, help="per module, wall clock")
    ap.add_argument("--workdir", default=None, help="where the copies go (kept); default: temp")
    ap.add_argument(
        "--collect", action="store_true",
        help="only read the results of an earlier run in --workdir (nothing is run)",
    )  # fmt: skip
    ap.add_argument("--note", default="", help="a line on how this phase was run, kept with it")
    ap.add_argument(
        "--merge", nargs="*", default=[], metavar="FILE",
        help="results files of other runs whose modules join this one's (--module '' to run "
        "nothing)",
    )  # fmt: skip
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="mutation", help="results file name (no suffix)")
    args = ap.parse_args()
    if args.collect and not args.workdir:
        raise SystemExit("--collect reads an earlier run: give its --workdir")
    mods = [m.strip() for m in args.module.split(",") if m.strip()]
    unknown = [m for m in mods if m not in MODULES]
    if unknown:
        raise SystemExit(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    path = Path(args.out) / f"{args.name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"meta": {}, "modules": {}}
    data["meta"] = {
        **host_meta(),
        "tool": "mutmut",
        "tool_version": importlib.metadata.version("mutmut"),
        "python": platform.python_version(),
        "workers": 1,
        "threads": 1,  # torch's (OMP_NUM_THREADS)
        "fuzz_cases": args.fuzz_cases,
        "timeout_multiplier": args.timeout_multiplier,
        "threshold": THRESHOLD,
    }
    for other in args.merge:
        for mod, phases in json.loads(Path(other).read_text())["modules"].items():
            data["modules"].setdefault(mod, {}).update(phases)
    if args.merge:
        data["meta"]["merged"] = "modules run in separate processes, then merged (--merge)"
        write_results(args.out, args.name, data, lines_of(data))
    for mod in mods:
        target = MODULES[mod]
        with tempfile.TemporaryDirectory(prefix=f"mutation-{mod}-") as tmp:
            work = Path(args.workdir) / mod if args.workdir else Path(tmp)
            if args.workdir and not args.collect:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
            result = run_module(mod, target, work, args)
        entry = data["modules"].setdefault(mod, {})
        entry.update(why=target.why, skipped=list(target.skip))
        if args.collect:  # what the run itself recorded stays
            earlier = entry.get(args.phase) or {}
            result["minutes"] = earlier.get("minutes")
            result["note"] = result["note"] or earlier.get("note", "")
        entry[args.phase] = result
        print(f"{mod} ({args.phase}): {result['score']:.1%} of {result['total']} killed "
              f"in {result['minutes']} min", flush=True)  # fmt: skip
        write_results(args.out, args.name, data, lines_of(data))


if __name__ == "__main__":
    main()
