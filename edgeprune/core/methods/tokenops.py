"""Static token operations shared by the methods: every shape is a Python int.

Keeping the top k tokens is TopK, then row gathers, in two graph forms with the same
result:

- **index form** (default; ONNX, TensorRT, CoreML, PyTorch): the rows by
  ``gather_tokens`` (one GatherND in ONNX), the dropped-token mask by a
  ScatterElements, and sums over tokens as ReduceSum. Fastest on ONNX Runtime.
- **XNNPACK form** (inside ``xnnpack_form()``; the ExecuTorch lowering sets it): the
  same TopK, but the rows by one ``index_select`` (``take_rows``: ``torch.gather``
  copies element by element, ~0.35 ms for DeiT-T's 197 × 192 on a portable kernel,
  ``index_select`` copies rows, ~1 µs), sums as MatMuls with a ones row (ExecuTorch's
  sum is a mean times N, which lands off the integer for some counts), every matrix
  product one ``bmm`` and every constant made once outside the trace. XNNPACK has no
  TopK or gather: they run on portable kernels between delegate segments, a few µs
  each. Sections 12–15 of the report kept everything inside XNNPACK instead (ranks from
  pairwise Clip/Ceil steps, rows as a MatMul of a k×N one-hot of the ranks): O(N²)
  ranking and k·N·C multiply-adds per selection made it slower than the TopK and the
  row copy.

Both forms keep the same tokens in the same order (score order, best first), ties
included: ExecuTorch's portable TopK breaks them as PyTorch's does (the export's parity
check compares the program with PyTorch); ``exact_ties=True`` ranks first
(``distinct_rank``: equal keys in token order) for a method whose ties must be exact
on every runtime.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

from edgeprune.core.models.deit import gather_tokens

_XNNPACK: contextvars.ContextVar[bool] = contextvars.ContextVar("xnnpack_form", default=False)


@contextlib.contextmanager
def xnnpack_form() -> Iterator[None]:
    """Models built or traced inside take the XNNPACK form of the token operations."""
    token = _XNNPACK.set(True)
    try:
        yield
    finally:
        _XNNPACK.reset(token)


def prepare_trace(model: torch.nn.Module) -> None:
    """Before any export traces ``model``: every module with a ``prepare_trace`` makes,
    from its weights' values, the choices a trace cannot (``torch.export`` has no values;
    SPViT's predictor reads whether its heads are tied)."""
    for module in model.modules():
        if hasattr(module, "prepare_trace"):
            module.prepare_trace()


def in_xnnpack_form() -> bool:
    """Whether models are traced in the XNNPACK form now (``xnnpack_form()``)."""
    return _XNNPACK.get()


_KERNELS: contextvars.ContextVar[bool] = contextvars.ContextVar("edgeprune_kernels", default=False)


@contextlib.contextmanager
def edgeprune_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside, the XNNPACK form may call edgeprune's own ExecuTorch kernels (an op in the
    ``edgeprune`` namespace, ``runtimes/kernels``) for a selector step that would
    otherwise take many small ops (``export --target executorch --custom-kernels``)."""
    token = _KERNELS.set(enabled)
    try:
        yield
    finally:
        _KERNELS.reset(token)


def kernels_enabled() -> bool:
    """Whether the XNNPACK form traced now calls edgeprune's own kernels."""
    return _XNNPACK.get() and _KERNELS.get()


def define_op(schema: str, out_schema: str, impl, meta) -> None:
    """An op in PyTorch's ``edgeprune`` namespace with its ``.out`` variant (which the
    ExecuTorch program calls; ``runtimes/kernels`` implements it): ``impl`` computes it
    in PyTorch (the reference, and what runs eagerly), ``meta`` gives the output shapes
    (for ``torch.export``). Defined once per process."""
    name = schema.split("(", 1)[0]
    if name in _OPS_DEFINED:
        return
    lib = torch.library.Library("edgeprune", "FRAGMENT")
    lib.define(schema)
    lib.define(out_schema)

    def out_impl(*args, **outs):
        results = impl(*args)
        for dst, src in zip(outs.values(), results, strict=True):
            dst.copy_(src)
        return tuple(outs.values())

    def out_meta(*args, **outs):
        return tuple(outs.values())

    lib.impl(name, impl, "CompositeExplicitAutograd")
    lib.impl(name, meta, "Meta")
    lib.impl(f"{name}.out", out_impl, "CompositeExplicitAutograd")
    lib.impl(f"{name}.out", out_meta, "Meta")
    _OPS_DEFINED[name] = lib  # the library object keeps the registrations alive


_OPS_DEFINED: dict[str, torch.library.Library] = {}


def step(d: torch.Tensor) -> torch.Tensor:
    """1.0 where d > 0, else 0.0, exactly (any positive float clamps into (0, 1] and
    ceils to 1). Clip and Ceil, not a comparison and a cast: XNNPACK runs these, so
    the ranking stays inside the delegate; ONNX, CoreML and TensorRT take them too."""
    return torch.ceil(torch.clamp(d, 0.0, 1.0))


def distinct_rank(key: torch.Tensor, largest: bool) -> torch.Tensor:
    """B×N keys -> B×N float ranks 0..N-1 (0: the largest key when ``largest``, else the
    smallest), all distinct: equal keys rank in token order. Exact below 2**24 tokens."""
    n = key.shape[1]
    kj, ki = key.unsqueeze(2), key.unsqueeze(1)  # B×N×1 (token j), B×1×N (token i)
    # [b, j, i] = 1 where token j ranks before token i: key j better, or equal and j
    # earlier (the terms exclude each other; arithmetic, not bool and/or, which
    # coremltools does not convert)
    better, worse = (step(kj - ki), step(ki - kj)) if largest else (step(ki - kj), step(kj - ki))
    ahead = better + (1.0 - better - worse) * _strictly_before(n, key)
    if not _XNNPACK.get():
        return ahead.sum(dim=1)  # ReduceSum: exact, and cheapest on ONNX Runtime
    # summed by a MatMul with a ones row, exact for counts of 0/1 in float32, where
    # ExecuTorch's sum (a mean times N) can land off the integer
    return _bmm(_ones_row(n, key), ahead).squeeze(1)


class Selection:
    """The k tokens kept out of N: ``idx``, their numbers (B×k int64), best first."""

    def __init__(self, n: int, idx: torch.Tensor):
        self.n, self.idx, self.k = n, idx, idx.shape[1]

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×N×C -> the kept rows, B×k×C."""
        return take_rows(x, self.idx)

    def values(self, v: torch.Tensor) -> torch.Tensor:
        """v: B×N -> the kept entries, B×k."""
        return torch.gather(v, 1, self.idx)

    def dropped(self, like: torch.Tensor) -> torch.Tensor:
        """B×N float mask: 1 for the tokens not kept, 0 for the kept ones."""
        return torch.ones_like(like).scatter(1, self.idx, 0.0)

    def rest(self) -> torch.Tensor:
        """B×(N-k) int64: the numbers of the tokens *not* kept, in token order."""
        return _complement_ascending(self.idx, self.n)

    def rest_in_order(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×N×C -> the N - k rows *not* kept, in token order (B×(N-k)×C)."""
        return take_rows(x, self.rest())

    def into_best(self, scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each kept row of x summed into its best column of ``scores`` (B×N×M; first
        maximum on ties): B×M×C. The kept rows' scores and rows, then one M×k one-hot
        MatMul."""
        return matmul(best_match(self.rows(scores)), self.rows(x))


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: B×N×C, idx: B×K row numbers (int64) -> B×K×C, row q of batch b being
    x[b, idx[b, q]]. Index form: ``gather_tokens`` (one GatherND in ONNX). XNNPACK form:
    one ``index_select`` (along the tokens at batch 1, on the B·N rows otherwise), a
    portable kernel that copies K rows; at batch 1 ``idx`` may come flattened (K), which
    saves the flattening (a portable copy) when it indexes several tensors."""
    if not _XNNPACK.get():
        return gather_tokens(x, idx)
    b, n, c = x.shape
    if b == 1:
        return x.index_select(1, idx if idx.dim() == 1 else idx.reshape(-1))
    idx = idx + constant(_row_offsets, b, n, like=idx)  # a constant: no scalar arithmetic
    return x.reshape(b * n, c).index_select(0, idx.reshape(-1)).reshape(b, -1, c)


def _row_offsets(b: int, n: int) -> torch.Tensor:
    return (torch.arange(b) * n).view(b, 1)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, with a or b 3-D (the other 3-D or a 2-D constant). In the XNNPACK form one
    ``bmm`` (see ``_bmm``); otherwise ``@``, which ONNX takes as one MatMul."""
    return _bmm(a, b) if _XNNPACK.get() else a @ b


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 3-D a and b, either of batch 1 or 2-D (a constant: its view and expand
    fold away): one ``bmm``. ``torch.export`` keeps a ``bmm`` as it is, and decomposes
    ``@`` of 3-D tensors into expand, clone, view, bmm and view: more nodes for every
    re-trace of the lowering to walk (DeiT-S ToMe: ~14 such products a block)."""
    a, b = (t if t.dim() == 3 else t.unsqueeze(0) for t in (a, b))
    batch = max(a.shape[0], b.shape[0])
    a, b = (t if t.shape[0] == batch else t.expand(batch, -1, -1) for t in (a, b))
    return torch.bmm(a, b)


def constant(build, *key: int, like: torch.Tensor) -> torch.Tensor:
    """The constant ``build(*key)`` in ``like``'s dtype and device. XNNPACK form: made
    once, outside any trace, and reused, so ``torch.export`` lifts it with no node (a
    tensor made in the traced code becomes a copy node at least, an arange and a compare
    four). Other forms: a literal, which the ONNX exporter takes as one Constant."""
    if _XNNPACK.get():
        return _constant(build, key, like.dtype, like.device)
    return torch.tensor(_literal(build, key), dtype=like.dtype, device=like.device)


@functools.lru_cache(maxsize=256)
def _constant(build, key: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with _untraced():
        return build(*key).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _literal(build, key: tuple) -> list:
    with _untraced():
        return build(*key).tolist()


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Outside every tracer (``torch.export``'s fake tensors and proxies, the TorchScript
    tracer of the ONNX exporter): what is made here is a real tensor, which a trace then
    captures as a constant."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with unset_fake_temporarily(), disable_proxy_modes_tracing():
            yield
    finally:
        torch._C._set_tracing_state(state)


def _ones_build(k: int) -> torch.Tensor:
    return torch.ones(1, 1, k)


def _triangle_build(n: int) -> torch.Tensor:
    pos = torch.arange(n)
    return (pos.view(n, 1) < pos.view(1, n)).double().unsqueeze(0)


def _ones_row(k: int, like: torch.Tensor) -> torch.Tensor:
    """1×1×k ones, a constant (XNNPACK form)."""
    return constant(_ones_build, k, like=like)


def _below(a: torch.Tensor, k: float) -> torch.Tensor:
    """1.0 where the integer-valued a < k (an integer), else 0.0: clamp(k - a, 0, 1);
    exact when a is a count summed by a MatMul of 0/1 values (exact in float32 below
    2**24), never by ExecuTorch's mean-based sum."""
    return torch.clamp(k - a, 0.0, 1.0)


def _strictly_before(n: int, like: torch.Tensor) -> torch.Tensor:
    """[j, i] = 1 where j < i: N×N, in the XNNPACK form a 1×N×N constant (traced as
    arange, compare and cast it is four nodes more per use for every re-trace of the
    lowering to walk; they fold away only after the edge passes)."""
    if _XNNPACK.get():
        return constant(_triangle_build, n, like=like)
    pos = torch.arange(n, device=like.device)
    return (pos.unsqueeze(1) < pos.unsqueeze(0)).to(like.dtype)


def _complement_ascending(src_idx: torch.Tensor, n: int) -> torch.Tensor:
    """B×r indices into n rows -> the other n - r indices, ascending (B×(n-r)).

    One ScatterElements and one TopK: the keys are -position, with -inf written at the
    selected rows, so the largest n - r keys are the others from the lowest index up.
    Exact for any scores (ties included): exactly r rows are marked."""
    # a literal, not -arange(n): CoreML's converter types a float arange as int32
    pos = torch.tensor([[-float(i) for i in range(n)]], device=src_idx.device)
    return largest_except(pos.expand(src_idx.shape[0], n), src_idx)


def largest_except(keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """keys: B×N (or N), idx: B×r (or r) distinct positions -> the positions of the
    N - r largest keys left when those at ``idx`` are taken out, largest first: one
    ScatterElements of -inf at ``idx`` and one TopK. Exact for finite keys: exactly r
    entries are marked."""
    d = keys.dim() - 1  # the last dim, as a positive axis (the exported graphs keep 1)
    k = keys.shape[d] - idx.shape[d]
    return torch.topk(keys.scatter(d, idx, float("-inf")), k, dim=d, sorted=True)[1]


def best_match(scores: torch.Tensor, row_max: torch.Tensor | None = None) -> torch.Tensor:
    """B×r×M scores -> B×M×r one-hot: [j, t] = 1 where j is row t's best column (the
    first one on ties, as argmax). The index form is an ArgMax and an Equal against
    the column positions; the XNNPACK form marks the row maxima (1 - step(max - s))
    and keeps the first by counting maxima to its left (one MatMul of a triangle),
    inside the delegate (an ArgMax and an Equal on portable kernels were slower).
    ``row_max`` (B×r×1): the rows' maxima when known already (XNNPACK form)."""
    m = scores.shape[-1]
    if not _XNNPACK.get():
        dst = scores.argmax(dim=-1, keepdim=True)  # B×r×1
        cols = torch.arange(m, device=scores.device).view(1, 1, m)
        return (dst == cols).to(scores.dtype).transpose(1, 2)
    if row_max is None:
        row_max = scores.amax(dim=-1, keepdim=True)
    is_max = 1.0 - step(row_max - scores)
    first = is_max * _below(_bmm(is_max, _strictly_before(m, scores)), 1.0)  # none before
    return first.transpose(1, 2)


def alternate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B×N×C -> (even rows, odd rows). Index form: two strided slices. XNNPACK form
    (XNNPACK takes stride-1 slices only): pad N to even, view as B×N/2×2C, and slice
    the two halves of the last dim."""
    if not _XNNPACK.get():
        return x[:, ::2], x[:, 1::2]
    b, n, c = x.shape
    if n % 2:
        x = F.pad(x, (0, 0, 0, 1))
    pairs = x.reshape(b, (n + 1) // 2, 2 * c)
    return pairs[..., :c], pairs[:, : n // 2, c:]


def select_top(
    key: torch.Tensor,
    k: int,
    largest: bool = True,
    exact_ties: bool = False,
) -> Selection:
    """The ``k`` tokens with the largest (``largest``) or smallest keys (B×N), best first."""
    if exact_ties:
        key, largest = distinct_rank(key, largest), False
    return Selection(key.shape[1], torch.topk(key, k, dim=1, largest=largest, sorted=True)[1])


def weighted_rest(x: torch.Tensor, weights: torch.Tensor, sel: Selection, normalise: bool):
    """One token from the tokens *not* kept: sum of x_i · w_i over them (B×1×C), divided
    by the sum of their weights when ``normalise``."""
    w = (weights * sel.dropped(weights)).unsqueeze(1)  # B×1×N
    out = matmul(w, x)  # one MatMul, not a B×N×C product and a reduction over N
    if normalise:
        out = out / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return out
