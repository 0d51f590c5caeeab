"""Nothing is trusted that was not checked (issue 33, "verify before trusting"): a cached
native library is loaded only if its sha256 matches the one recorded when it was built
here; an artifact's sha256 is checked against its manifest before evaluate, bench and
check use it; resume files are keyed on file contents, not paths."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeprune.core.atomic import sha256_file
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from tests.conftest import need_tool

# ---- the cached kernel library --------------------------------------------------------

EVIL = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void mark(void) {
    const char *p = getenv("EDGEPRUNE_TEST_MARKER");
    if (p) { FILE *f = fopen(p, "w"); if (f) { fputs("loaded\n", f); fclose(f); } }
}
"""

# loads the kernels the way bench does (a program that needs them), in a fresh process
# (a process loads them once), and runs ToMe's merge through them
LOAD_AND_RUN = textwrap.dedent(
    """
    import torch
    from executorch.exir import to_edge_transform_and_lower
    import edgeprune.core.methods.tome  # registers torch.ops.edgeprune.tome_merge
    from edgeprune.core.methods.tome import merge_scored
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    class Merge(torch.nn.Module):
        def forward(self, x, size, scores):
            out, s = torch.ops.edgeprune.tome_merge(x, size, scores, 2)
            return out + 0.0, s + 0.0

    g = torch.Generator().manual_seed(0)
    x, size = torch.randn(1, 9, 4, generator=g), torch.ones(1, 9, 1)
    scores = torch.randn(1, 5, 4, generator=g)
    ep = torch.export.export(Merge(), (x, size, scores))
    runner = ExecuTorchRunner(threads=1)
    runner.load(to_edge_transform_and_lower(ep).to_executorch().buffer)
    got = runner.method.execute([x, size, scores])
    want = merge_scored(x, size, scores, 2)
    assert torch.allclose(got[0], want[0], atol=1e-5), "wrong merge"
    print("kernel ok")
    """
)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """The kernel library built once, in a cache folder of its own."""
    pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')
    need_tool("g++")
    from edgeprune.core.backends import executorch_kernels as k

    cache = tmp_path_factory.mktemp("kcache") / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPRUNE_CACHE", str(cache))
    mp.delenv("CXX", raising=False)
    lib = k.build()
    yield k, cache, lib
    mp.undo()


def _evil_library(tmp_path: Path) -> Path:
    src = tmp_path / "evil.c"
    src.write_text(EVIL)
    out = tmp_path / "evil.so"
    subprocess.run(["g++", "-x", "c", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


def _load_in_a_new_process(cache: Path, marker: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "EDGEPRUNE_CACHE": str(cache), "EDGEPRUNE_TEST_MARKER": str(marker)}
    full.pop("CXX", None)
    return subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN],
        capture_output=True, text=True, env={**full, **env}, timeout=600,
    )  # fmt: skip


def test_built_library_has_its_sha256_recorded_in_a_private_folder(kernels):
    k, cache, lib = kernels
    record = json.loads(k.record_path(lib).read_text())
    assert record["sha256"] == sha256_file(lib) and k.verified(lib)
    for folder in (cache, lib.parent.parent, lib.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_replaced_library_is_rebuilt_not_loaded(kernels, tmp_path, monkeypatch):
    """Another valid .so put in place of the built library: the next load does not run
    its code (its constructor would write the marker), rebuilds, and the kernel works."""
    k, cache, lib = kernels
    shutil.copyfile(_evil_library(tmp_path), lib)
    marker = tmp_path / "marker"
    res = _load_in_a_new_process(cache, marker)
    assert not marker.exists(), "the replaced library was loaded"
    assert res.returncode == 0 and "kernel ok" in res.stdout, res.stderr[-2000:]
    assert k.verified(lib) and b"tome_merge" in lib.read_bytes()


def test_a_library_without_its_record_is_rebuilt(kernels, tmp_path):
    k, cache, lib = kernels
    shutil.copyfile(_evil_library(tmp_path), lib)
    k.record_path(lib).unlink()
    marker = tmp_path / "marker"
    res = _load_in_a_new_process(cache, marker)
    assert not marker.exists() and res.returncode == 0, res.stderr[-2000:]
    assert k.verified(lib)


def test_a_replaced_library_that_cannot_be_rebuilt_is_one_line(kernels, tmp_path, monkeypatch):
    k, cache, lib = kernels
    good = lib.read_bytes()
    shutil.copyfile(_evil_library(tmp_path), lib)
    no_bin = str(tmp_path / "no-bin")  # g++ is gone
    monkeypatch.setenv("PATH", no_bin)
    try:
        assert k.ready()[0] is False
        with pytest.raises(MissingRuntimeError) as e:
            k.build()
        line = e.value.one_line()
        assert "does not match the sha256 recorded" in line and "'g++' was not found" in line
        marker = tmp_path / "marker"
        res = _load_in_a_new_process(cache, marker, PATH=no_bin)
        assert res.returncode != 0 and not marker.exists()
        assert "does not match the sha256 recorded" in res.stderr
    finally:
        lib.write_bytes(good)
    assert k.verified(lib)


def test_cache_folders_writable_by_others_are_fixed_or_refused(kernels, tmp_path, monkeypatch):
    k, cache, lib = kernels
    os.chmod(lib.parent.parent, 0o777)  # a folder edgeprune made: made private again
    os.chmod(lib.parent, 0o775)
    assert k.build() == lib
    assert stat.S_IMODE(lib.parent.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(lib.parent.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # $EDGEPRUNE_CACHE itself: refused, left as it is
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(shared))
    with pytest.raises(EdgepruneError, match="writable by others"):
        k.build()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777 and list(shared.iterdir()) == []


# ---- an artifact's sha256, checked against its manifest before use ---------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Two exported ONNX artifacts with their manifests (a pruned and a dense tiny DeiT),
    and an image folder."""
    from edgeprune.core.images import write_demo_images
    from edgeprune.core.source import resolve
    from edgeprune.export.onnx import export_onnx
    from tests.accuracy_helper import HEADS, LOCS, write_dense, write_dynamicvit

    d = tmp_path_factory.mktemp("artifacts")
    write_demo_images(d / "imgs", classes=4, per_class=2, size=40)
    ckpt = str(write_dynamicvit(d / "dyvit.pth"))
    pruned = resolve(ckpt, keep=(0.75, 0.5, 0.25), locs=LOCS, heads=HEADS)
    export_onnx(pruned, d / "a.onnx", n_parity_inputs=1)
    export_onnx(resolve(str(write_dense(d / "dense.pth")), heads=HEADS), d / "b.onnx")
    return d


@pytest.fixture
def bad(artifacts, tmp_path):
    """``make(kind)``: a copy of a.onnx and its manifest in a folder of its own, its bytes
    changed: ``"flip"`` one byte flipped, ``"swap"`` replaced by b.onnx (a valid model)."""

    def make(kind: str) -> Path:
        from edgeprune.export.manifest import manifest_path

        art = tmp_path / kind / "a.onnx"
        art.parent.mkdir()
        shutil.copyfile(manifest_path(artifacts / "a.onnx"), manifest_path(art))
        if kind == "swap":
            shutil.copyfile(artifacts / "b.onnx", art)
        else:
            data = bytearray((artifacts / "a.onnx").read_bytes())
            data[len(data) // 2] ^= 0x01
            art.write_bytes(bytes(data))
        return art

    return make


def _commands(art: Path, imgs: Path) -> dict[str, list]:
    return {
        "evaluate": ["evaluate", art, "--images", imgs, "--heads", "2", "--threads", "1"],
        "bench": ["bench", art, "--runs", "3", "--threads", "1"],
        "check": ["check", art, "--target", "ort"],
    }


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.parametrize("kind", ["flip", "swap"])
def test_a_changed_artifact_is_refused_by_evaluate_bench_and_check(cli, artifacts, bad, kind):
    from edgeprune.export.manifest import manifest_path, sha256_file

    art = bad(kind)
    want = json.loads(manifest_path(art).read_text())["sha256"]
    got = sha256_file(art)
    for name, args in _commands(art, artifacts / "imgs").items():
        code, out, err = cli(*args)
        line = _one_error(err)
        assert code == 2 and out == "", (name, out)
        assert str(art) in line and want[:12] in line and got[:12] in line, (name, line)
        assert "--no-verify-hash" in line, (name, line)


def test_no_verify_hash_runs_and_says_so(cli, artifacts, bad):
    art = bad("swap")  # a valid model: it runs once the hash is not checked
    for name, args in _commands(art, artifacts / "imgs").items():
        code, out, err = cli(*args, "--no-verify-hash")
        assert code in (0, 1), (name, err)  # check: 1 when it finds something to report
        assert "was not checked against its manifest (--no-verify-hash)" in out + err, name
        assert "error:" not in err, (name, err)
    cmds = _commands(art, artifacts / "imgs")
    code, out, err = cli(*cmds["bench"], "--no-verify-hash", "--json")
    assert code == 0 and json.loads(out)["extra"]["sha256"] == "not checked"
    code, out, _ = cli(*cmds["evaluate"], "--no-verify-hash", "--json")
    assert code == 0 and any("not checked" in n for n in json.loads(out)["notes"])


def test_an_intact_artifact_is_verified(cli, artifacts):
    from edgeprune.export.manifest import verify_artifact

    art = artifacts / "a.onnx"
    assert verify_artifact(art) == "verified"
    code, out, err = cli(*_commands(art, artifacts / "imgs")["bench"], "--json")
    assert code == 0 and json.loads(out)["extra"]["sha256"] == "verified", err
    assert "not checked" not in err


def test_verify_artifact_folders_missing_records_and_bad_manifests(tmp_path):
    """A folder artifact (.mlpackage) is hashed as a tree; no manifest or no recorded
    sha256 (a TensorRT export that did not build its engine) is "not recorded"; a
    manifest that cannot be read is refused, not skipped."""
    from edgeprune.export.manifest import manifest_path, sha256_tree, verify_artifact

    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "weights.bin").write_bytes(b"\x00" * 64)
    (pkg / "Manifest.json").write_text("{}")
    assert verify_artifact(pkg) == "not recorded"
    man = {"artifact": pkg.name, "sha256": sha256_tree(pkg)}
    manifest_path(pkg).write_text(json.dumps(man))
    assert verify_artifact(pkg) == "verified"
    (pkg / "Data" / "weights.bin").write_bytes(b"\x00" * 63 + b"\x01")
    with pytest.raises(EdgepruneError, match="is not the artifact its manifest"):
        verify_artifact(pkg)
    assert verify_artifact(pkg, check=False) == "not checked"
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine built on the device")
    manifest_path(engine).write_text(json.dumps({"artifact": engine.name, "target": "trt"}))
    assert verify_artifact(engine) == "not recorded"
    manifest_path(engine).write_text("{not json")
    with pytest.raises(EdgepruneError) as e:
        verify_artifact(engine)
    assert "cannot be checked" in e.value.one_line()
    assert "--no-verify-hash" in e.value.one_line()


# ---- resume files keyed on contents -----------------------------------------------------


def test_sensitivity_resume_is_keyed_on_the_images_and_checkpoint_contents(tmp_path):
    """Same paths, other pixels (mtime put back) or other weights: the saved points are
    not reused — the resume is refused, naming what changed."""
    from PIL import Image

    from edgeprune.accuracy.sensitivity import SensitivityRequest, measure
    from edgeprune.core.images import write_demo_images
    from tests.accuracy_helper import HEADS, LOCS, write_dynamicvit

    ckpt = write_dynamicvit(tmp_path / "dyvit.pth")
    write_demo_images(tmp_path / "imgs", classes=2, per_class=2, size=36)
    req = SensitivityRequest(
        src=str(ckpt), images=tmp_path / "imgs", grid=(0.5, 1.0), heads=HEADS, locs=LOCS,
        batch=4, threads=1,
    )  # fmt: skip
    partial = tmp_path / "s.json.partial.json"

    def stop_after_two(desc, i, n):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure(req, partial, stop_after_two)
    assert len(json.loads(partial.read_text())["points"]) == 2
    saved = partial.read_text()

    image = sorted((tmp_path / "imgs").rglob("*.png"))[0]
    original, st = image.read_bytes(), image.stat()
    with Image.open(image) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(EdgepruneError) as e:
        measure(req, partial)
    assert "images_sha256 differs" in e.value.one_line()
    assert partial.read_text() == saved  # kept for the user to delete, nothing mixed in

    image.write_bytes(original)  # the same pixels again
    weights = ckpt.read_bytes()
    write_dynamicvit(ckpt, seed=1)  # other weights under the same file name
    with pytest.raises(EdgepruneError) as e:
        measure(req, partial)
    assert "source_sha256 differs" in e.value.one_line()
    ckpt.write_bytes(weights)  # the same contents as saved: resumed, then removed
    data = measure(req, partial)
    assert not partial.exists() and set(data["stages"]) == {str(i) for i in LOCS}


def test_profile_resume_is_keyed_on_the_descriptor_and_the_machine(cli, tmp_path, monkeypatch):
    """A descriptor edited under the same name, or another machine: the saved timings
    are not reused (refused, naming what changed)."""
    from dataclasses import replace

    from edgeprune.profiles import devices
    from edgeprune.profiling import sweep
    from edgeprune.runtimes.onnxruntime import OnnxRuntimeRunner

    real, calls = OnnxRuntimeRunner.time, []

    def interrupted(self, policy=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, policy)

    fast = ("--arch", "deit_tiny", "--grid", "1,32", "--runs", "3", "--check-points", "0")
    args = ("profile", "--device", "cpu", *fast, "--no-e2e", "--no-halves", "--no-plot")
    out = tmp_path / "p.json"
    monkeypatch.setattr(OnnxRuntimeRunner, "time", interrupted)
    code, _, err = cli(*args, "--out", out, "--resume")
    assert code == 130, err
    monkeypatch.setattr(OnnxRuntimeRunner, "time", real)
    partial = tmp_path / "p.json.partial.json"
    saved = partial.read_text()

    every = devices.all_devices()
    edited = {**every, "cpu": replace(every["cpu"], precision="fp16")}
    monkeypatch.setattr(devices, "all_devices", lambda: edited)
    code, _, err = cli(*args, "--out", out, "--resume")
    assert code == 2 and "device_sha256 differs" in err, err
    monkeypatch.setattr(devices, "all_devices", lambda: every)

    here = sweep.fingerprint()
    monkeypatch.setattr(sweep, "fingerprint", lambda: {**here, "id": "another-machine"})
    code, _, err = cli(*args, "--out", out, "--resume")
    assert code == 2 and "machine differs" in err, err
    assert partial.read_text() == saved and not out.exists()
