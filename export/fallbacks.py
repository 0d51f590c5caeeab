"""Fallbacks: the ops of an artifact that run outside the delegate or execution provider
it was exported for, named at export (the manifest's ``fallbacks``, one warning) and
judged by ``check --strict``.

- ExecuTorch: the operators the program calls outside its XNNPACK delegates (they run on
  ExecuTorch's portable kernels, or on edgeprune's own kernels), read from the program's
  instructions: what a runner must carry kernels for.
- ONNX Runtime: the nodes the session assigned to another execution provider than the one
  asked for, from ONNX Runtime's own session profiler (each node event names its
  provider). This onnxruntime has the CPU provider only; another provider's assignment
  can be read only where it is installed, and the manifest says so.
- Core ML: which compute unit runs each op is known only to Core ML's compute plan on
  macOS; the manifest says it was not checked.

The manifest's record: ``{"requested": ..., "checked": bool, "ops": {op: count},
"count": n, "how": ...}``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeprune.core.backends.optional import import_executorch
from edgeprune.export.check import Finding

ORT_CPU = "CPUExecutionProvider"


def record(requested: str, ops: dict[str, int] | None, how: str) -> dict:
    """The manifest's ``fallbacks``: ``ops`` None when they could not be checked here."""
    checked = ops is not None
    ops = dict(sorted((ops or {}).items()))
    return {
        "requested": requested,
        "checked": checked,
        "ops": ops,
        "count": sum(ops.values()),
        "how": how,
    }


def executorch(program: bytes) -> dict:
    """The operators an ExecuTorch program runs outside its delegates, read from the
    program itself: its kernel calls (not delegate calls), by operator name as a runner's
    kernel registry knows it (``aten::topk.values``, ``edgeprune::tome_merge.out``)."""
    plan = _plan(program)
    names = [o.name + (f".{o.overload}" if o.overload else "") for o in plan.operators]
    calls = Counter(
        names[i.instr_args.op_index]
        for chain in plan.chains
        for i in chain.instructions
        if type(i.instr_args).__name__ == "KernelCall"
    )
    how = "kernel calls of the program outside its XNNPACK delegate calls"
    return record("XnnpackBackend", dict(calls), how)


def _plan(program: bytes):
    serialize = import_executorch("exir._serialize._program")
    pte = serialize.deserialize_pte_binary(program)
    return getattr(pte, "program", pte).execution_plan[0]


def ort_assignment(model: bytes | str | Path, provider: str = ORT_CPU) -> dict:
    """The nodes of ``model`` an ONNX Runtime session asked for ``provider`` placed on
    another provider, by op type (not checked where ``provider`` is not installed)."""
    have = ort.get_available_providers()
    if provider not in have:
        return not_checked(provider, f"this onnxruntime has {', '.join(have)}")
    placed = node_placements(model, provider)
    how = "node placements in ONNX Runtime's session profile"
    return record(provider, away_from(placed, provider), how)


def node_placements(model: bytes | str | Path, provider: str = ORT_CPU) -> list[tuple[str, str]]:
    """(op type, provider) of every node ``model``'s session ran, once, asking for
    ``provider`` with ONNX Runtime's profiler on (each node event names its provider)."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-fallbacks-") as d:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d) / "trace")
        so.log_severity_level = 3
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        sess = ort.InferenceSession(data, so, providers=[provider])
        sess.run(None, _zeros(sess))
        trace = json.loads(Path(sess.end_profiling()).read_text())
    return [
        (e["args"]["op_name"], e["args"].get("provider", ""))
        for e in trace
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
    ]


def away_from(placed: list[tuple[str, str]], provider: str) -> dict[str, int]:
    """Op types (and how many nodes) placed on another provider than ``provider``."""
    return dict(Counter(op for op, where in placed if where != provider))


def _zeros(session) -> dict[str, np.ndarray]:
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    return {
        i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], types.get(i.type))
        for i in session.get_inputs()
    }


def not_checked(requested: str, why: str) -> dict:
    return record(requested, None, f"not checked: {why}")


def summary(fallbacks: dict | None) -> str | None:
    """The one export warning naming the fallbacks (None when there are none)."""
    if not fallbacks or not fallbacks.get("count"):
        return None
    ops = ", ".join(f"{op} ×{n}" for op, n in fallbacks["ops"].items())
    return (
        f"{fallbacks['count']} op(s) run outside {fallbacks['requested']}: {ops} "
        "(the manifest's 'fallbacks'; check --strict fails on them)"
    )


def findings(fallbacks: dict | None) -> list[Finding]:
    """``check``: one finding per op kind left outside the requested delegate/provider."""
    if not fallbacks:
        return []
    where = f"outside {fallbacks.get('requested', '?')}"
    return [
        Finding(severity="fallback", rule="fallback", where=where, detail=f"{op} ×{n}")
        for op, n in (fallbacks.get("ops") or {}).items()
    ]
