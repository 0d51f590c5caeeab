"""``bench --ops``: where an artifact's time goes, per block and per op kind, the pruned
graph beside the dense one of its architecture.

ONNX Runtime is profiled here with its own session profiler (every node's kernel time,
averaged over the timed runs); the groups come from the graph the session runs (after
onnxruntime's fusions), see ``node_groups``. A profile made on a device is read from its
file (``ops_files``: trtexec's ``--exportProfile`` JSON, an ExecuTorch ETDump). ExecuTorch
here records no ETDump: for a ``.pte`` the manifest's delegate counts are given instead,
labelled as counts (``bench_ops``)."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.core.backends.optional import import_executorch
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.schema import load_json
from edgeprune.runtimes.onnxruntime import SessionProfile

# the groups besides the blocks, in the order they are shown
EMBED, SELECTOR, HEAD, OTHER = "embed", "selector", "head", "other"

# ---- which group a node belongs to --------------------------------------------------------
_BLOCK = re.compile(r"(?:^|[/.])blocks[./](\d+)(?=[/._]|$)")
_SELECTOR = re.compile(r"(?:^|[/.])(?:score_predictor|selectors?|predictor)(?:[/._]|$)")
_EMBED_NAME = re.compile(r"(?:^|/)patch_embed(?:/|$)")
_HEAD_NAME = re.compile(r"(?:^|/)(?:head|norm|fc_norm)(?:/|$)")
_EMBED_WEIGHT = re.compile(r"^(?:patch_embed\.|cls_token$|pos_embed$)")
_HEAD_WEIGHT = re.compile(r"^(?:head|norm|fc_norm)\.")


def block_name(i: int) -> str:
    return f"block {i}"


def name_group(name: str) -> str | None:
    """The group a node's name says (``/blocks.3/attn/MatMul``: block 3), or None."""
    if m := _BLOCK.search(name):
        return block_name(int(m[1]))
    if _SELECTOR.search(name):
        return SELECTOR
    if _EMBED_NAME.search(name):
        return EMBED
    if _HEAD_NAME.search(name):
        return HEAD
    return None


def weight_group(weights: Iterable[str]) -> str | None:
    """The group of the weights a node reads (``blocks.3.attn.qkv.bias``: block 3), the
    first that says one, or None (onnx's own names such as ``onnx::MatMul_917`` say none)."""
    for w in weights:
        if m := re.match(r"blocks\.(\d+)\.", w):
            return block_name(int(m[1]))
        if _SELECTOR.search(w):
            return SELECTOR
        if _EMBED_WEIGHT.match(w):
            return EMBED
        if _HEAD_WEIGHT.match(w):
            return HEAD
    return None


GraphNode = tuple[str, Sequence[str], Sequence[str]]  # (name, inputs, outputs)
# the ops that pick or move tokens by computed indices: a method's token selection
TOKEN_OPS = frozenset(
    {"TopK", "ArgMax", "ArgMin", "GatherND", "GatherElements", "ScatterElements", "ScatterND"}
)


def node_groups(
    nodes: Sequence[GraphNode], weights: Set[str], kinds: Sequence[str] | None = None
) -> dict[str, str]:
    """The group of every node of a graph given in topological order (``kinds``: their
    op types).

    A node whose name or weights say a group is an anchor (``name_group``, then
    ``weight_group``); onnxruntime's fused and generated nodes (``Gemm_1``, ``Gelu``,
    ``Transpose_token_3``) and the methods' own token operations say none. Such a node
    goes by the anchors it lies between in the data flow (those that feed it, those it
    feeds, through other such nodes): selector work when a selector's is among them (a
    DynamicViT/SPViT predictor's input, the TopK and gathers on its scores); inside a
    group when it is fed by that group alone and feeds it (attention's reshapes, EViT's
    and ToMe's in-block token selection and merging, a block's residual add); between two
    blocks, selector work when it is connected there to a token op (A-ViT's halting and
    gathers), else the block that feeds it (a reshape and residual add after the last
    weight). Given names only (no inputs: an .ort model, a TensorRT profile), by order:
    between two anchors of one group, in it, else with the one before."""
    anchors = [name_group(n) or weight_group(w for w in ins if w in weights) for n, ins, _ in nodes]
    if not any(ins or outs for _n, ins, outs in nodes):
        return _by_order(nodes, anchors)
    made = {t: i for i, (_n, _ins, outs) in enumerate(nodes) for t in outs}
    feeds = [sorted({made[t] for t in ins if t in made}) for _n, ins, _o in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, f in enumerate(feeds):
        for j in f:
            users[j].append(i)
    up = _reach(anchors, feeds, range(len(nodes)))
    down = _reach(anchors, users, reversed(range(len(nodes))))
    groups = [a or _inside(up[i], down[i]) for i, a in enumerate(anchors)]
    between = {i for i, g in enumerate(groups) if g is None}
    token = _token_work(between, feeds, users, kinds or [""] * len(nodes), groups)
    for i in between:
        groups[i] = SELECTOR if i in token else max(up[i], key=group_order)
    return {n: g for (n, _i, _o), g in zip(nodes, groups, strict=True)}


def _reach(anchors: list[str | None], edges: list[list[int]], order: Iterable[int]) -> list[set]:
    """For each node, the anchors' groups it reaches along ``edges`` through non-anchors."""
    out: list[set] = [set() for _ in anchors]
    for i in order:
        out[i] = {anchors[i]} if anchors[i] else set().union(*(out[j] for j in edges[i]))
    return out


def _inside(up: set[str], down: set[str]) -> str | None:
    """The group of a non-anchor from the groups feeding it (``up``) and fed by it
    (``down``); None between two blocks (``_token_work`` decides)."""
    if SELECTOR in up | down:
        return SELECTOR
    last = max(up, key=group_order) if up else None
    if last in down:  # within a group (a residual add: fed by the block before too)
        return last
    if up and down:
        return None
    return last or (min(down, key=group_order) if down else OTHER)


def _token_work(
    between: set[int],
    feeds: list[list[int]],
    users: list[list[int]],
    kinds: Sequence[str],
    groups: list[str | None],
) -> set[int]:
    """The nodes of ``between`` connected within it to a token op (``TOKEN_OPS``) or to
    selector work (SPViT's scoring MLP, which only feeds the selector's sums)."""
    parent = {i: i for i in between}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in between:
        for j in feeds[i]:
            if j in between:
                parent[root(i)] = root(j)
    marked = {
        root(i)
        for i in between
        if kinds[i] in TOKEN_OPS or any(groups[j] == SELECTOR for j in feeds[i] + users[i])
    }
    return {i for i in between if root(i) in marked}


def _by_order(nodes: Sequence[GraphNode], anchors: list[str | None]) -> dict[str, str]:
    before, after = _carry(anchors), _carry(anchors[::-1])[::-1]
    return {
        name: a or b or c or OTHER
        for (name, _i, _o), a, b, c in zip(nodes, anchors, before, after, strict=True)
    }


def _carry(anchors: list[str | None]) -> list[str | None]:
    """For each position, the last anchor strictly before it."""
    out, last = [], None
    for a in anchors:
        out.append(last)
        last = a or last
    return out


def graph_groups(model) -> dict[str, str]:
    """``node_groups`` of an ``onnx.ModelProto``'s graph."""
    g = model.graph
    nodes = [(n.name, list(n.input), list(n.output)) for n in g.node]
    return node_groups(nodes, {i.name for i in g.initializer}, [n.op_type for n in g.node])


def group_order(name: str) -> tuple[int, int]:
    """embed, the blocks in order, selector, head, other (anything else last)."""
    fixed = {EMBED: (0, 0), SELECTOR: (2, 0), HEAD: (3, 0), OTHER: (4, 0)}
    if m := re.fullmatch(r"block (\d+)", name):
        return (1, int(m[1]))
    return fixed.get(name, (5, 0))


# ---- a profile ----------------------------------------------------------------------------
@dataclass(kw_only=True)
class Row:
    """One group (or op kind): ms per run, share of the profile's total, nodes in it
    (distinct nodes, once per run); ``kinds``: its ms by op kind (for the plot)."""

    name: str
    ms: float
    share: float
    nodes: int
    kinds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"name": self.name, "ms": self.ms, "share": self.share, "nodes": self.nodes}
        return d | ({"kinds": self.kinds} if self.kinds else {})


@dataclass(kw_only=True)
class OpProfile:
    """A per-operator profile of one model: ``blocks`` (embed, block 0…, selector, head,
    other) and ``kinds`` (op kinds, most time first), in ms per run; ``node_ms``, the sum
    over every node; ``run_ms``, the runtime's own time per run when it gives one, and
    ``outside_ms``, the median over the runs of each run's time beyond its nodes' (the
    session's own work; the profiler, on, adds to it)."""

    model: str
    source: str
    runtime: str
    runs: int
    node_ms: float
    blocks: list[Row]
    kinds: list[Row]
    run_ms: float | None = None
    outside_ms: float | None = None
    threads: int | None = None
    notes: list[str] = field(default_factory=list)

    def block(self, name: str) -> Row | None:
        return next((r for r in self.blocks if r.name == name), None)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "source": self.source,
            "runtime": self.runtime,
            "threads": self.threads,
            "runs": self.runs,
            "node_ms": self.node_ms,
            "run_ms": self.run_ms,
            "outside_ms": self.outside_ms,
            "blocks": [r.to_dict() for r in self.blocks],
            "kinds": [r.to_dict() for r in self.kinds],
            "notes": list(self.notes),
        }


def aggregate(
    times: Iterable[tuple[str, str, str, float]], runs: int
) -> tuple[float, list[Row], list[Row]]:
    """``times``: ``(group, node, kind, ms)`` for every node run over ``runs`` runs →
    (total ms per run, rows per group in ``group_order``, rows per kind, most first).
    A node's ms per run is the median of its runs (times its runs per run): a burst of
    load in one run moves no row."""
    per_node: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for group, node, kind, ms in times:
        per_node[(group, node, kind)].append(ms)
    ms_g, ms_k, ms_gk = Counter(), Counter(), defaultdict(Counter)
    nodes_g, nodes_k = defaultdict(set), defaultdict(set)
    for (group, node, kind), values in per_node.items():
        ms = statistics.median(values) * len(values) / max(runs, 1)
        ms_g[group] += ms
        ms_k[kind] += ms
        ms_gk[group][kind] += ms
        nodes_g[group].add(node)
        nodes_k[kind].add(node)
    total = sum(ms_g.values())

    def row(name, ms, nodes, kinds=None) -> Row:
        share = ms / total if total > 0 else 0.0
        return Row(name=name, ms=ms, share=share, nodes=len(nodes), kinds=kinds or {})

    blocks = [
        row(g, ms_g[g], nodes_g[g], dict(ms_gk[g].most_common()))
        for g in sorted(ms_g, key=group_order)
    ]
    kinds = [row(k, ms, nodes_k[k]) for k, ms in ms_k.most_common()]
    return total, blocks, kinds


def from_session(sp: SessionProfile, model: str) -> OpProfile:
    """An ``OpProfile`` from onnxruntime's session profiler (``profile_session``)."""
    if sp.graph is not None:
        groups = graph_groups(sp.graph)
    else:  # an .ort model: the names alone, in the order the first run ran them
        order = [(name, (), ()) for run, name, _k, _us in sp.nodes if run == 0]
        groups = node_groups(order, set())
    runs = len(sp.run_us)
    total, blocks, kinds = aggregate(
        ((groups.get(name, OTHER), name, kind, us / 1000) for _r, name, kind, us in sp.nodes), runs
    )
    run_ms = statistics.median(sp.run_us) / 1000 if runs else None
    in_nodes = Counter()
    for run, _n, _k, us in sp.nodes:
        in_nodes[run] += us
    gaps = [us - in_nodes[i] for i, us in enumerate(sp.run_us)]
    outside_ms = statistics.median(gaps) / 1000 if gaps else None
    notes = [] if sp.graph is not None else ["an .ort model: groups from node names only"]
    return OpProfile(
        model=model, source=f"onnxruntime {sp.version} session profiler", runtime="onnxruntime",
        runs=runs, node_ms=total, blocks=blocks, kinds=kinds, run_ms=run_ms, outside_ms=outside_ms,
        threads=sp.threads, notes=notes,
    )  # fmt: skip


# ---- profiles made on a device, read from their files ------------------------------------
TRT_HINT = "give the JSON that trtexec --dumpProfile --exportProfile=FILE wrote"


def read_trtexec_profile(path: Path) -> OpProfile:
    """``trtexec --dumpProfile --exportProfile=FILE``'s JSON: a ``{"count": N}`` record (the
    runs), then one ``{"name", "averageMs", "percentage", …}`` record per layer in the order
    they ran. TensorRT keeps ONNX node names in its layer names (fused ones name their
    nodes: ``/blocks.0/attn/qkv/MatMul + …``, ``{ForeignNode[/blocks.0/…/blocks.3/Add_1]}``):
    a layer goes to the group of the first name in it, as ``node_groups`` places names."""
    data = load_json(path, f"--trt-profile {path} is not valid JSON", TRT_HINT)
    if not isinstance(data, list) or not data:
        raise EdgepruneError(f"--trt-profile {path} is not a list of layer records", TRT_HINT)
    count = next((r["count"] for r in data if isinstance(r, dict) and "count" in r), None)
    layers = [r for r in data if isinstance(r, dict) and "name" in r]
    if not layers:
        raise EdgepruneError(f"--trt-profile {path} holds no layer record", TRT_HINT)
    times = []
    for i, r in enumerate(layers):
        ms = r.get("averageMs")
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 <= ms < 1e9:
            raise EdgepruneError(
                f"--trt-profile {path}: layer {i} has no averageMs (a number of ms)", TRT_HINT
            )
        times.append((str(r["name"]), float(ms)))
    groups = node_groups([(name, (), ()) for name, _ in times], set())
    total, blocks, kinds = aggregate(((groups[n], n, trt_kind(n), ms) for n, ms in times), 1)
    runs = int(count) if isinstance(count, int) and not isinstance(count, bool) else 0
    return OpProfile(
        model=Path(path).name, source="trtexec --exportProfile", runtime="tensorrt",
        runs=runs, node_ms=total, blocks=blocks, kinds=kinds,
    )  # fmt: skip


def trt_kind(name: str) -> str:
    """A TensorRT layer's kind from its name (its profile records none)."""
    if name.startswith("{ForeignNode["):
        return "ForeignNode (Myelin)"
    if name.startswith("PWN("):
        return "PWN (pointwise)"
    if name.startswith("Reformatting"):
        return "Reformat"
    first = name.split(" + ")[0].rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"_\d+$", "", first) or "?"


ETDUMP_HINT = "give the file executor_runner --etdump_path FILE wrote"
# ETDump events that are not an op: the run itself, loading, the delegate call around ops
_RUN_EVENT, _DELEGATE_CALL = "Method::execute", "DELEGATE_CALL"
_NOT_OPS = {_RUN_EVENT, "Program::load_method", "Method::init", "Method::load"}
DELEGATED, PORTABLE = "delegated", "not delegated"


def check_etdump(path: Path):
    """ExecuTorch's devtools (whose ``Inspector`` reads ETDumps), once ``path`` is seen to
    be an ETDump (a size-prefixed flatbuffer with the identifier ``ED00``); one line
    (exit 2) for a file that is not one, or where the devtools do not import."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[8:12] != b"ED00":
        raise EdgepruneError(
            f"--etdump {path} is not an ETDump (no ED00 file identifier)", ETDUMP_HINT
        )
    try:
        return import_executorch("devtools")
    except MissingRuntimeError as e:
        raise MissingRuntimeError(
            f"cannot read --etdump {path}: ExecuTorch's devtools Inspector is not available "
            f"here ({e.message})",
            e.hint,
        ) from None


def read_etdump(path: Path) -> OpProfile:
    """An ETDump (a runner built with the event tracer, e.g. a phone's ``executor_runner
    --etdump_path FILE``) read with ExecuTorch's devtools ``Inspector``: the ops run by
    delegates (XNNPACK) against the rest, by op kind. Without an ETRecord the events carry
    no module names, so the groups are delegated / not delegated rather than blocks."""
    devtools = check_etdump(path)
    try:
        with _quiet_fds():
            inspector = devtools.Inspector(etdump_path=str(path))
    except subprocess.CalledProcessError:  # flatc could not decode it
        raise EdgepruneError(f"--etdump {path} is not a readable ETDump", ETDUMP_HINT) from None
    except Exception as e:  # noqa: BLE001  (the Inspector's own errors on a bad dump)
        why = " ".join(str(e).split())[:160]
        raise EdgepruneError(f"--etdump {path} is not a readable ETDump ({why})") from None
    times, runs = etdump_times(
        (i, e.name, e.is_delegated_op, list(e.perf_data.raw) if e.perf_data else [])
        for b in inspector.event_blocks
        for i, e in enumerate(b.events)
    )
    if not times:
        raise EdgepruneError(f"--etdump {path} holds no timed op", ETDUMP_HINT)
    total, blocks, kinds = aggregate(times, runs)
    return OpProfile(
        model=Path(path).name, source="ExecuTorch ETDump (devtools Inspector)",
        runtime="executorch", runs=runs, node_ms=total, blocks=blocks, kinds=kinds,
    )  # fmt: skip


def etdump_times(
    events: Iterable[tuple[int, str, bool, list[float]]],
) -> tuple[list[tuple[str, str, str, float]], int]:
    """``(index, name, delegated, ms of each run)`` events → ``(group, node, kind, ms)``
    for every run of every op, and the run count. A delegate call's time beyond the ops
    recorded inside it is the delegate's own ("delegate call"); without ops inside, the
    call is the one op."""
    times, runs, calls, inside = [], 0, [], 0.0
    for i, name, delegated, raw in events:
        if name == _RUN_EVENT:
            runs = max(runs, len(raw))
        if name in _NOT_OPS or not raw:
            continue
        if name == _DELEGATE_CALL:
            calls.append((i, float(sum(raw))))
            continue
        if delegated:
            inside += float(sum(raw))
            group, kind = DELEGATED, re.sub(r"\s*#\d+$", "", name)
        else:
            group, kind = PORTABLE, re.sub(r"^native_call_|\.out$", "", name)
        times += [(group, f"{i}:{name}", kind, float(ms)) for ms in raw]
    if not inside:  # a delegate's ops not recorded: each call is one op
        times += [(DELEGATED, f"{i}:{_DELEGATE_CALL}", "XNNPACK delegate", ms) for i, ms in calls]
    elif (extra := sum(ms for _, ms in calls) - inside) > 0:
        times.append((DELEGATED, f"{calls[0][0]}:{_DELEGATE_CALL}", "delegate call", extra))
    return times, max(runs, 1)


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Keep what a child process writes (the Inspector runs flatc) off the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
