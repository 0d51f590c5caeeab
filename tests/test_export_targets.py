"""Export targets: TensorRT (missing runtime, command line, stand-in trtexec), FP16 ONNX,
ONNX Runtime Mobile (.ort, int8), CoreML (conversion for every method), option checks."""

import json
import os
import stat
import sys

import onnx
import pytest
from onnx import TensorProto

from edgeprune.core.arch import get_arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import METHODS
from edgeprune.core.source import resolve
from edgeprune.export import ort as ort_mod
from edgeprune.export import tensorrt as trt_mod
from edgeprune.export.onnx import verified_onnx
from edgeprune.export.parity import compare
from edgeprune.export.targets import ExportRequest, export_source

SPEC = "deit_tiny:dynamicvit@0.7"


@pytest.fixture(scope="module")
def dyvit():
    src = resolve(SPEC)
    return src, verified_onnx(src, n_parity_inputs=2)


@pytest.fixture
def no_tensorrt(monkeypatch, tmp_path):
    """Neither the tensorrt module nor trtexec: as on this machine, made certain."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


# ---- option combinations: one line, exit 2, before any work ---------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["-t", "coreml", "--precision", "int8"], "--precision int8 is not supported"),
        (["-t", "coreml", "--dynamic-batch", "1,2,4"], "--dynamic-batch does not apply"),
        (["-t", "trt", "--precision", "int8"], "--precision int8 is not supported"),
        (["-t", "trt", "--dynamic-batch", "4,2,1"], "MIN ≤ OPT ≤ MAX"),
        (["-t", "trt", "--dynamic-batch", "1,2"], "is not MIN,OPT,MAX"),
        (["-t", "onnx", "--int8"], "--int8 does not apply"),
        (["-t", "ort", "--precision", "int8"], "use --int8"),
        (["-t", "coreml", "--min-target", "ios12"], "not an ML Program target"),
        (["-t", "coreml", "--compute-units", "npu"], "--compute-units npu is unknown"),
        (["-t", "onnx", "--workspace", "512"], "--workspace does not apply"),
        (["-t", "tflite"], "unknown target 'tflite'"),
    ],
)
def test_bad_option_combinations_one_line_exit_2(cli, tmp_path, args, needle):
    code, out, err = cli("export", SPEC, "-o", tmp_path / "x", *args)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ---- TensorRT -------------------------------------------------------------------------
def test_trtexec_command_construction(tmp_path):
    opts = trt_mod.TrtOptions(
        precision="fp16",
        workspace_mib=2048,
        dynamic_batch=(1, 8, 32),
        timing_cache=tmp_path / "t.cache",
    )
    cmd = trt_mod.trtexec_command(tmp_path / "m.onnx", tmp_path / "m.engine", opts, (3, 224, 224))
    assert cmd[:4] == [
        "trtexec",
        f"--onnx={tmp_path / 'm.onnx'}",
        f"--saveEngine={tmp_path / 'm.engine'}",
        "--memPoolSize=workspace:2048M",
    ]
    assert "--fp16" in cmd
    assert "--minShapes=input:1x3x224x224" in cmd and "--optShapes=input:8x3x224x224" in cmd
    assert "--maxShapes=input:32x3x224x224" in cmd
    assert f"--timingCacheFile={tmp_path / 't.cache'}" in cmd
    # TensorRT 11 is strongly typed: no precision flag (the ONNX carries FP16)
    cmd11 = trt_mod.trtexec_command(
        tmp_path / "m.fp16.onnx", tmp_path / "m.engine", opts, (3, 224, 224), trt_major=11
    )
    assert "--fp16" not in cmd11 and "--onnx=" + str(tmp_path / "m.fp16.onnx") in cmd11
    static = trt_mod.trtexec_command("a.onnx", "a.engine", trt_mod.TrtOptions(), (3, 224, 224))
    assert not [c for c in static if "Shapes" in c or c == "--fp16"]


def test_trt_missing_runtime_keeps_onnx_and_prints_command(cli, tmp_path, no_tensorrt):
    out = tmp_path / "m.engine"
    code, stdout, err = cli(
        "export", SPEC, "-t", "trt", "--precision", "fp16", "-o", out, "--parity-inputs", "2"
    )
    assert code == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: neither TensorRT")
    assert not out.exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "emptybin",
        "m.engine.manifest.json",
        "m.fp16.onnx",
        "m.fp16.onnx.manifest.json",
        "m.onnx",
        "m.onnx.manifest.json",
    ]
    man = json.loads((tmp_path / "m.engine.manifest.json").read_text())
    assert man["engine"]["status"] == "not_built"
    assert man["parity"] == {
        "status": "skipped",
        "reason": "no TensorRT here: build the engine on the device",
    }
    line10 = man["trtexec_commands"]["tensorrt10"]
    assert line10 == (
        "trtexec --onnx=m.onnx --saveEngine=m.engine --memPoolSize=workspace:1024M --fp16 "
        "--skipInference"
    )
    assert line10 in stdout
    assert man["trtexec_commands"]["tensorrt11"].startswith("trtexec --onnx=m.fp16.onnx")
    assert man["onnx"]["parity"]["status"] == "passed"
    assert man["onnx_fp16"]["parity"]["status"] == "passed"
    proto = onnx.load(tmp_path / "m.onnx")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [
        1,
        3,
        224,
        224,
    ]


STAND_IN = """\
#!{python}
# A STAND-IN for trtexec (no TensorRT here): the "engine" names the ONNX it was built
# from, and running it runs that ONNX in onnxruntime, so the subprocess plumbing
# (build, --loadInputs, --exportOutput, parsing, parity) is exercised for real.
import json, sys
import numpy as np
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v{version}] # trtexec --help")
elif "--saveEngine" in args:
    open(args["--saveEngine"], "w").write("STAND-IN ENGINE\\n" + args["--onnx"])
    open(sys.argv[0] + ".log", "a").write(" ".join(sys.argv[1:]) + "\\n")
    print("&&&& PASSED")
elif "--loadEngine" in args and {export}:
    import onnxruntime as ort
    onnx_path = open(args["--loadEngine"]).read().splitlines()[1]
    name, path = args["--loadInputs"].split(":", 1)
    sess = ort.InferenceSession(onnx_path)
    shape = sess.get_inputs()[0].shape
    x = np.fromfile(path, dtype=np.float32).reshape(shape)
    y = sess.run(None, {{name: x}})[0]
    json.dump([{{"name": "logits", "dimensions": "x".join(map(str, y.shape)),
                "values": y.reshape(-1).tolist()}}], open(args["--exportOutput"], "w"))
"""


def _stand_in(tmp_path, monkeypatch, export: bool, version: str = "100300"):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "trtexec"
    exe.write_text(STAND_IN.format(python=sys.executable, version=version, export=export))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_trt_subprocess_path_with_stand_in_trtexec_runs_parity(tmp_path, monkeypatch, dyvit):
    src, v = dyvit
    monkeypatch.setattr(trt_mod, "verified_onnx", lambda *a, **k: v)
    exe = _stand_in(tmp_path, monkeypatch, export=True)
    out = tmp_path / "m.engine"
    man = export_source(src, ExportRequest(target="trt", out=out, parity_inputs=2)).manifest
    assert man["builder"] == {"kind": "trtexec", "version": "10.3.0", "path": str(exe)}
    # the stand-in computes with onnxruntime, so this checks the plumbing, not TensorRT
    assert man["parity"]["status"] == "passed" and man["parity"]["runtime"] == "tensorrt"
    assert man["parity"]["max_abs_diff"] <= 1e-4 and man["engine"]["status"] == "verified"
    assert out.read_text().startswith("STAND-IN ENGINE")
    build_line = (tmp_path / "bin" / "trtexec.log").read_text()
    assert "--memPoolSize=workspace:1024M" in build_line and "--skipInference" in build_line
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_trt_stand_in_trtexec_without_output_is_unverified(tmp_path, monkeypatch, dyvit):
    src, v = dyvit
    monkeypatch.setattr(trt_mod, "verified_onnx", lambda *a, **k: v)
    _stand_in(tmp_path, monkeypatch, export=False, version="110000")
    req = ExportRequest(target="trt", out=tmp_path / "m.engine", parity_inputs=2)
    man = export_source(src, req).manifest
    assert man["engine"]["status"] == "unverified"  # never claimed verified without parity
    assert man["parity"]["status"] == "skipped" and "exportOutput" in man["parity"]["reason"]


def test_trt_prefers_python_api_when_it_imports(monkeypatch):
    from types import ModuleType

    from edgeprune.core.backends.tensorrt import find_builder

    fake = ModuleType("tensorrt")
    fake.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    b = find_builder()
    assert b.kind == "api" and b.major == 10


def _stand_in_tensorrt(version: str, calls: list):
    """A STAND-IN for the tensorrt module (no TensorRT here): records what the builder
    is asked to do, so the API plumbing is checked, not TensorRT."""
    from types import ModuleType, SimpleNamespace

    def record(name, result=None):
        return lambda *args, **kwargs: calls.append((name, args, kwargs)) or result

    cache = SimpleNamespace(serialize=lambda: b"NEW CACHE")
    config = SimpleNamespace(
        set_memory_pool_limit=record("workspace"),
        set_flag=record("flag"),
        add_optimization_profile=record("add_profile"),
        create_timing_cache=record("timing_cache", cache),
        set_timing_cache=record("set_timing_cache"),
        get_timing_cache=lambda: cache,
    )
    profile = SimpleNamespace(set_shape=record("shape"))
    builder = SimpleNamespace(
        create_network=record("network", "NETWORK"),
        create_builder_config=lambda: config,
        create_optimization_profile=lambda: profile,
        build_serialized_network=record("build", b"ENGINE"),
    )
    trt = ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Builder = lambda logger: builder
    trt.OnnxParser = lambda network, logger: SimpleNamespace(
        parse=record("parse", True), num_errors=0
    )
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = SimpleNamespace(FP16="FP16")
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=0)
    return trt


@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_engine_builder_drives_the_tensorrt_api(monkeypatch, tmp_path, version):
    """The ONNX is parsed, the workspace set, FP16 is a builder flag on TensorRT 10 only
    (11 is strongly typed), a dynamic batch is an optimization profile on the input, and
    the timing cache is read before the build and written after it."""
    from edgeprune.core.backends.tensorrt import build_engine_api

    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _stand_in_tensorrt(version, calls))
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"OLD CACHE")
    data = build_engine_api(
        b"ONNX", "fp16", workspace_mib=512, chw=(3, 224, 224), dynamic_batch=(1, 8, 32),
        timing_cache=cache,
    )  # fmt: skip
    assert data == b"ENGINE" and cache.read_bytes() == b"NEW CACHE"
    seen = {name: args for name, args, _ in calls}
    assert seen["parse"] == (b"ONNX",) and seen["workspace"] == ("WORKSPACE", 512 << 20)
    assert ("flag" in seen) is (version == "10.3.0")
    assert seen["shape"] == ("input", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert seen["timing_cache"] == (b"OLD CACHE",)
    assert [name for name, _, _ in calls][-1] == "build"


def test_fp16_onnx_runs_in_onnxruntime_and_agrees(dyvit):
    from edgeprune.export.fp16 import to_fp16
    from edgeprune.runtimes.onnxruntime import make_session, run

    src, v = dyvit
    before = v.proto.SerializeToString()
    p16 = to_fp16(v.proto)
    assert v.proto.SerializeToString() == before  # the float32 graph is left as it was
    inits = {i.name: i.data_type for i in p16.graph.initializer}
    assert TensorProto.FLOAT16 in inits.values()
    # a valid ONNX: every node after the nodes that make its inputs (onnxruntime's
    # converter appends the I/O casts at the end; onnx.checker refuses that order)
    onnx.checker.check_model(p16)
    made = {i.name for i in p16.graph.input} | set(inits)
    for n in p16.graph.node:
        assert all(i in made for i in n.input if i), n.name
        made |= set(n.output)
    producers = {o: n for n in p16.graph.node for o in n.output}
    for n in p16.graph.node:
        if n.op_type == "LayerNormalization":  # inputs kept in fp32: a Cast or a fp32 weight
            x = producers[n.input[0]]
            assert x.op_type == "Cast" and x.attribute[0].i == TensorProto.FLOAT
            assert inits[n.input[1]] == TensorProto.FLOAT
    assert p16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    sess = make_session(p16.SerializeToString())
    tol = trt_mod.TOLERANCE["fp16"]
    p = compare(src.model(), lambda x: run(sess, x), batch=1, img_size=224, n_inputs=4, tol=tol)
    assert p.ok and p.top1_agreement >= 0.9 and p.max_abs_diff < 0.5


# ---- ONNX Runtime Mobile --------------------------------------------------------------
@pytest.mark.parametrize("int8", [False, True])
def test_ort_format_model_loads_and_matches(tmp_path, monkeypatch, dyvit, int8):
    from edgeprune.runtimes.onnxruntime import make_session, run

    src, v = dyvit
    monkeypatch.setattr(ort_mod, "verified_onnx", lambda *a, **k: v)
    out = tmp_path / "m.ort"
    req = ExportRequest(target="ort", out=out, parity_inputs=4, options={"int8": int8})
    man = export_source(src, req).manifest
    assert out.read_bytes()[4:8] == b"ORTM"  # flatbuffer identifier of the ORT format
    make_session(out)
    p = man["parity"]
    assert p["status"] == "passed" and p["inputs"] == 4
    # every node on the CPU provider it was checked for (int8's dynamic-quantization ops too)
    fb = man["fallbacks"]
    assert fb["requested"] == "CPUExecutionProvider" and fb["checked"] and fb["count"] == 0
    if int8:
        assert man["precision"] == "int8" and p["max_abs_diff"] > 1e-4
        # judged by KL(fp32 ‖ int8) (measured ~0.001; broken quantizations ≥ 0.15) and
        # top-1 agreement: on 32 seeded images ≥ 85 % (measured 90.6 %: this random-weight
        # DeiT-T's 1000 logits are near-tied, top-2 margins down to 0.05)
        assert p["max_kl_divergence"] == 0.1 and p["kl_divergence"] <= 0.01
        sess = make_session(out)
        wide = compare(src.model(), lambda x: run(sess, x), batch=1, img_size=224,
                       n_inputs=32, tol=ort_mod.TOLERANCE["int8"])  # fmt: skip
        assert wide.ok and wide.top1_agreement >= 0.85 and wide.kl <= 0.01, wide.to_dict()
    else:
        assert p["max_abs_diff"] <= 1e-4 and p["top1_agreement"] == 1.0
    assert json.loads((tmp_path / "m.ort.manifest.json").read_text()) == man


# ---- CoreML ---------------------------------------------------------------------------
def _builtin_spec(name: str) -> str:
    method = METHODS[name]
    method.config_from_param(None, get_arch("deit_tiny"))  # every method has a default
    return f"deit_tiny:{name}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_coreml_conversion_every_method(tmp_path, name):
    import coremltools as ct

    from edgeprune.export.coreml import export_coreml

    src = resolve(_builtin_spec(name))
    out = tmp_path / "m.mlpackage"
    man = export_coreml(src, out, n_parity_inputs=2)
    assert out.is_dir() and (out / "Manifest.json").exists()
    if sys.platform != "darwin":
        assert man["parity"] == {"status": "skipped", "reason": "needs macOS"}
    spec = ct.utils.load_spec(str(out))
    meta = dict(spec.description.metadata.userDefined)
    assert json.loads(meta["edgeprune.token_plan"]) == src.plan.to_dict()
    assert meta["edgeprune.method"] == name
    inp = spec.description.input[0]
    assert inp.name == "input" and list(inp.type.multiArrayType.shape) == [1, 3, 224, 224]
    assert spec.description.output[0].name == "logits"
    assert man["precision"] == "fp16" and man["minimum_deployment_target"] == "iOS17"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.mlpackage",
        "m.mlpackage.manifest.json",
    ]
    with pytest.raises(EdgepruneError, match="already exists") as e:
        export_coreml(src, out)
    assert "--force" in e.value.one_line()


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    from edgeprune.core.atomic import atomic_dir

    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "x.mlpackage") as d:
        (d / "half").write_text("…")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_old_package(tmp_path):
    from edgeprune.core.atomic import atomic_dir

    target = tmp_path / "x.mlpackage"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_dir(target) as d:
        (d / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.mlpackage"]


# ---- one model, every target, one folder ----------------------------------------------
def test_every_target_side_by_side_with_default_names(cli, tmp_path, monkeypatch):
    """Each artifact has its own manifest (`<artifact name>.manifest.json`), so exporting
    one spec to several targets in one folder with default names works."""
    monkeypatch.chdir(tmp_path)
    stem = SPEC.replace(":", "_").replace("@", "_")
    for target in ("onnx", "ort", "coreml"):
        code, _, err = cli("export", SPEC, "-t", target, "--parity-inputs", "2")
        assert code == 0, err
    artifacts = {"onnx": f"{stem}.onnx", "ort": f"{stem}.ort", "coreml": f"{stem}.mlpackage"}
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [*artifacts.values(), *(a + ".manifest.json" for a in artifacts.values())]
    )
    for target, artifact in artifacts.items():
        man = json.loads((tmp_path / f"{artifact}.manifest.json").read_text())
        assert man["target"] == target and man["artifact"] == artifact
    code, _, err = cli("export", SPEC, "-t", "onnx", "--parity-inputs", "2")
    assert code == 2 and f"{stem}.onnx" in err and "--force" in err  # still refuses to overwrite


# ---- the registry ---------------------------------------------------------------------
def test_every_target_declares_a_tolerance_for_each_precision():
    from edgeprune.export.targets import load_targets

    targets = load_targets()
    # (registration order follows import order: a test may import a target module first)
    assert sorted(targets) == ["coreml", "executorch", "onnx", "ort", "trt"]
    for t in targets.values():
        assert t.default_precision in t.precisions
        assert set(t.precisions) <= set(t.tolerances), t.name
        assert t.suffix in t.accepted_suffixes()


def test_a_new_target_is_one_registered_class(tmp_path):
    """What a new target module does, in a test: its option and precision checks, its
    default name and its export all come from the class it registers."""
    from edgeprune.export.registry import TARGETS, Target, TargetOption, Tolerance, register
    from edgeprune.export.targets import ExportRequest, export_source, load_targets, validate

    def backend(value: str) -> str:
        if value not in ("xnnpack", "portable"):
            raise EdgepruneError(f"--backend {value} is unknown")
        return value

    load_targets()

    @register
    class Toy(Target):
        name = "toy"
        suffix = ".toy"
        tolerances = {"fp32": Tolerance(1e-4)}
        options = (TargetOption("backend", "--backend", default="xnnpack", parse=backend),)

        def export(self, source, req, out, progress=None):
            out.write_text(req.option("backend"))
            return self.result(out, {"target": self.name, "parity": {"status": "skipped"}})

    try:
        with pytest.raises(EdgepruneError, match="--backend does not apply to --target onnx"):
            validate(ExportRequest(target="onnx", options={"backend": "portable"}))
        with pytest.raises(EdgepruneError, match="--int8 does not apply to --target toy"):
            validate(ExportRequest(target="toy", options={"int8": True}))
        with pytest.raises(EdgepruneError, match="--backend npu is unknown"):
            validate(ExportRequest(target="toy", options={"backend": "npu"}))
        with pytest.raises(EdgepruneError, match="--precision fp16 is not supported") as e:
            validate(ExportRequest(target="toy", precision="fp16"))
        assert "--target toy takes --precision fp32" in e.value.one_line()
        res = export_source(None, ExportRequest(target="toy"), name=str(tmp_path / "m"))
        assert res.artifact == tmp_path / "m.toy" and res.artifact.read_text() == "xnnpack"
        assert res.manifest_path.name == "m.toy.manifest.json" and res.exit_code == 0
    finally:
        del TARGETS["toy"]


def test_unbuilt_engine_is_an_error_of_the_result(tmp_path, monkeypatch, no_tensorrt, dyvit):
    """The library, not the CLI, says that no engine here is an error (exit 2)."""
    from edgeprune.core.errors import MissingRuntimeError

    src, v = dyvit
    monkeypatch.setattr(trt_mod, "verified_onnx", lambda *a, **k: v)
    req = ExportRequest(target="trt", out=tmp_path / "m.engine", parity_inputs=2)
    res = export_source(src, req)
    assert isinstance(res.error, MissingRuntimeError) and res.exit_code == 2
    assert not res.written and not (tmp_path / "m.engine").exists()
    assert res.kept == [f"the verified ONNX {tmp_path / 'm.onnx'} (parity passed)"]
    assert res.next_steps[1].startswith("  TensorRT 10: trtexec --onnx=m.onnx")
    assert "m.engine.manifest.json" in res.error.one_line()


def test_trt_kept_graphs_carry_their_own_manifests(cli, tmp_path, no_tensorrt):
    """The ONNX graphs that ``--target trt`` keeps are artifacts in their own right: each
    has the onnx target's manifest (its file's real sha256, its own parity), so that
    ``evaluate`` takes the kept graph like any exported ONNX."""
    import hashlib

    out = tmp_path / "m.engine"
    cli("export", SPEC, "-t", "trt", "--precision", "fp16", "-o", out, "--parity-inputs", "2")
    for name, precision in (("m.onnx", None), ("m.fp16.onnx", "fp16")):
        man = json.loads((tmp_path / f"{name}.manifest.json").read_text())
        data = (tmp_path / name).read_bytes()
        assert man["target"] == "onnx" and man["artifact"] == name
        assert man["sha256"] == hashlib.sha256(data).hexdigest()
        assert man["kept_by"] == {"target": "trt", "artifact": "m.engine"}
        assert man["parity"]["status"] == "passed" and man.get("precision") == precision
        ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
        assert set(man["ops"]) == ops
    images = tmp_path / "imgs"
    assert cli("demo-images", images, "--classes", "2", "--per-class", "2", "--size", "64")[0] == 0
    code, stdout, err = cli("evaluate", tmp_path / "m.onnx", "--images", images, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["images"] == 4
    ref = report["references"]["source"]
    assert ref["what"] == f"{SPEC} in PyTorch" and ref["top1_agreement"] == 100.0
