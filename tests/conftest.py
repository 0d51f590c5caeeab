"""Shared fixtures: small checkpoints in each method's exact published key layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from edgeprune.cli.app import main
from edgeprune.core.arch import get_arch


def timm_vit_keys(depth: int) -> set[str]:
    """timm's vision_transformer parameter names for a DeiT (no dist token)."""
    keys = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    return keys


def dynamicvit_predictor_keys(stages: int) -> set[str]:
    keys = set()
    for s in range(stages):
        for part in ("in_conv.0", "in_conv.1", "out_conv.0", "out_conv.2", "out_conv.4"):
            keys |= {f"score_predictor.{s}.{part}.weight", f"score_predictor.{s}.{part}.bias"}
    return keys


def make_state_dict(spec: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict in the method's layout: the built-in spec's own model (timm names),
    random weights from ``seed``."""
    from dataclasses import replace

    from edgeprune.core.source import resolve

    model = replace(resolve(spec), seed=seed).model()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_arch():
    return get_arch("deit_tiny")


@pytest.fixture
def builtin_arch(monkeypatch):
    """Register architectures as built-in for one test (specs and --arch name them):
    ``builtin_arch(arch)`` returns its name."""
    from edgeprune.core.arch import ARCHS

    def register(arch) -> str:
        monkeypatch.setitem(ARCHS, arch.name, arch)
        return arch.name

    return register


@pytest.fixture
def write_ckpt(tmp_path: Path):
    def _write(obj, name: str = "ckpt.pth") -> Path:
        p = tmp_path / name
        torch.save(obj, p)
        return p

    return _write


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def _run(*args: str):
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return _run


#: how many cases each fuzz test runs: a few hundred in CI; benchmarks/fuzz.py sets
#: EDGEPRUNE_FUZZ_CASES to thousands and records the counts per file format
FUZZ_CASES = int(os.environ.get("EDGEPRUNE_FUZZ_CASES", "200"))


@pytest.fixture
def fuzz_cases() -> int:
    """The number of cases a fuzz test should generate (seeded: the same cases each run)."""
    return FUZZ_CASES


# ---- system tools some tests use for real (sshd, adb, g++) -------------------------------
def in_ci() -> bool:
    """Whether this run is CI (``CI=true``, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def tool_unavailable(reason: str) -> None:
    """A test cannot run for want of a system tool: it skips, saying why — and under
    ``CI=true`` it FAILS, so that CI never goes green with the transport tests skipped
    (.ci/system-deps installs the tools)."""
    if in_ci():
        pytest.fail(f"CI=true and {reason} (.ci/system-deps installs it)", pytrace=False)
    pytest.skip(reason)


def need_tool(name: str, *paths: str) -> str:
    """The path of system tool ``name`` (on PATH, or at one of ``paths``); when it is
    missing, ``tool_unavailable`` (skip; under CI=true, fail)."""
    found = shutil.which(name) or next((p for p in paths if os.access(p, os.X_OK)), None)
    if found is None:
        tool_unavailable(f"'{name}' is not installed")
    return found


def pytest_configure(config):
    """A test process of a parallel run (pytest -n 3 on two cores) runs PyTorch on one
    thread: three processes each on all cores fight over them (the suite took 484 s
    with torch's default threads; with one, about a third less)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``quiet`` time the machine under a load they make themselves and wait
    for it to end: beside another test process the machine is never quiet. A run on
    several processes (``pytest -n 3``) leaves them out; the test command runs them
    after it, alone (``pytest -m quiet``); plain ``pytest`` runs them in line."""
    if not (config.getoption("numprocesses", None) or os.environ.get("PYTEST_XDIST_WORKER")):
        return
    quiet = [i for i in items if i.get_closest_marker("quiet")]
    if quiet:
        config.hook.pytest_deselected(items=quiet)
        items[:] = [i for i in items if not i.get_closest_marker("quiet")]
