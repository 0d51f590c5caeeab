"""ToMe, Token Merging (Bolya et al., ICLR 2023; facebookresearch/ToMe, tome/merge.py,
tome/patch/timm.py). Training-free: works on any DeiT checkpoint.

In every block, between attention and MLP, merge r tokens by bipartite soft matching:
tokens alternate into sets A (even positions) and B (odd); the metric is the keys
averaged over heads, cosine similarity; CLS (position 0, in A) is protected (its row
of scores is -inf; here a finite PROTECT, same result); each A token's best B match,
the r A tokens with the highest match are merged into their B token (sum of
size-weighted features / sum of sizes), the rest of A stays in original order (CLS
first), then B. Attention is proportional: log(size) is added to the attention
logits. r is clamped per block to (N - 1) // 2 as published, so r = 16 on DeiT-S
gives 197, 181, …, 21 and then 11.

Static rewrite: argsort -> TopK with a constant K = r (the merged A tokens); the
sorted unmerged rest -> one ScatterElements (-inf at the merged rows of a constant
-position key) and a TopK of the other na - r; gathers of whole token rows ->
GatherND (see ``gather_tokens``); scatter_reduce(sum) -> a one-hot r×Nb matrix
product (plain MatMul, TensorRT-friendly; r·Nb·C multiply-adds, ~10 µs a block on
DeiT-T, not the N²·C of a dense merge matrix). The metric is the keys summed over
heads (one MatMul of a constant row; the cosine normalisation removes the 1/H of the
mean). CLS protection is one Add of a constant column (``PROTECT``); the best match
is an ArgMax over the r merged rows only; as the released merge_wavg, x·size and
size travel as one B×N×(C+1) tensor (two strided slices, two gathers, one MatMul and
one Add for both) and are divided once at the end. Same result for distinct
similarity values. For ExecuTorch (``tokenops.xnnpack_form``) a TopK picks the merged
tokens and a second one, of a constant row key, the kept rows' numbers; the merge
works on the rows of x and size themselves (``_merge_rows``: row copies, no split,
concatenation or slices, the size weights divided before the MatMul), the keys are
summed over heads with adds, their row norms by a fully-connected layer, and the best
match is a first-maximum one-hot inside XNNPACK. With edgeprune's own kernels
(``export --target executorch --custom-kernels``) everything after the scores is one
``edgeprune::tome_merge`` call (``edgeprune/core/backends/kernels/tome_merge.cpp``; its
PyTorch reference is ``merge_scored``, the index form).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.base import Method, MethodConfig
from edgeprune.core.methods.tokenops import (
    alternate,
    best_match,
    constant,
    define_op,
    in_xnnpack_form,
    kernels_enabled,
    largest_except,
    matmul,
    select_top,
    take_rows,
)
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.plan import SelectorStage, TokenPlan

DEFAULT_R = 16


def merge_plan(n_tokens: int, depth: int, r: int) -> list[int]:
    """Tokens merged in each block, clamped as ToMe does ((N - 1) // 2, CLS protected)."""
    return clamp_schedule(n_tokens, [r] * depth)


def clamp_schedule(n_tokens: int, rs: Sequence[int]) -> list[int]:
    """A per-block r schedule as ToMe runs it: each block's r clamped to (N - 1) // 2 of
    the N tokens entering it (CLS protected; tome/merge.py ``min(r, (t - protected) // 2)``)."""
    out, n = [], n_tokens
    for r in rs:
        rb = max(0, min(int(r), (n - 1) // 2))
        out.append(rb)
        n -= rb
    return out


def inflected(r: int, inflect: float, depth: int) -> list[int]:
    """ToMe's own r schedule shapes (tome/utils.py ``parse_r`` with ``(r, inflect)``): r
    per block on a line from ``int(r·(1 − inflect))`` to ``2r`` minus that, truncated;
    inflect 0 is a constant r, -1 the paper's "decreasing schedule" (2r down to 0), +1
    increasing (0 up to 2r). Not clamped (``clamp_schedule``)."""
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return [int(lo + step * i) for i in range(depth)]


def check_schedule(rs: Sequence[int], arch: Arch) -> tuple[int, ...]:
    """A per-block r schedule (one merge count per block), refused unless every block
    merges at most (N - 1) // 2 of the N tokens entering it (what ToMe can merge)."""
    rs = tuple(rs)
    if len(rs) != arch.depth:
        raise EdgepruneError(
            f"ToMe r schedule {list(rs)} has {len(rs)} entries, {arch.name} has {arch.depth} "
            "blocks",
            "give one merge count per block",
        )
    n = arch.num_tokens
    for b, r in enumerate(rs):
        if not (isinstance(r, int) and not isinstance(r, bool) and r >= 0):
            raise EdgepruneError(f"ToMe r schedule {list(rs)}: block {b}'s r {r!r} is not a count")
        if r > (n - 1) // 2:
            raise EdgepruneError(
                f"ToMe r schedule {list(rs)} merges {r} tokens in block {b}, where only "
                f"{(n - 1) // 2} of its {n} can merge",
                "each block merges at most (N - 1) // 2 of the N tokens entering it",
            )
        n -= r
    return rs


def head_sum(k: torch.Tensor) -> torch.Tensor:
    """B×H×N×D keys -> B×N×D, their sum over heads: ToMe's metric k.mean(1) up to a
    factor the cosine normalisation removes. One MatMul of a constant 1×H row on the
    keys viewed B×H×(N·D) (a reduction over the head axis is ~3× slower on ONNX
    Runtime CPU)."""
    _, h, n, d = k.shape
    if in_xnnpack_form():
        # XNNPACK packs a MatMul's dynamic operand at every run (~5 µs for DeiT-T's
        # keys at 197 tokens); H - 1 adds of the heads cost ~2 µs
        out = k[:, 0]
        for i in range(1, h):
            out = out + k[:, i]
        return out
    ones = constant(_ones, h, like=k)  # a constant in every exported form, not a full()
    return matmul(ones, k.reshape(-1, h, n * d)).reshape(-1, n, d)


def _normalise(m: torch.Tensor) -> torch.Tensor:
    """B×N×D -> the rows scaled to unit L2 norm. XNNPACK form: the squares summed by a
    fully-connected layer with a constant ones column (its weights packed once; a bmm
    packs its operand at every run, and a mean over 4-D inner dims, XNNPACK's reduction,
    is a transpose and a pool), then times the reciprocal square root."""
    if in_xnnpack_form():
        b, n, d = m.shape
        sq = (m * m).reshape(b * n, d) @ constant(_ones_column, d, like=m)
        return m * torch.rsqrt(sq.reshape(b, n, 1))
    return m / m.norm(dim=-1, keepdim=True)


def _ones_column(d: int) -> torch.Tensor:
    return torch.ones(d, 1)


def _unit_sizes(b: int, n: int) -> torch.Tensor:
    return torch.ones(b, n, 1)


def _ones(h: int) -> torch.Tensor:
    return torch.ones(1, h)


def _protect(na: int) -> torch.Tensor:
    return torch.tensor([PROTECT] + [0.0] * (na - 1)).view(1, na, 1)


# CLS protection: added to CLS's row of scores. Cosine similarities lie in [-1, 1], so
# CLS's best match is below every other token's and CLS is never among the r merged
# (r < number of A tokens). Finite, not -inf as released: the XNNPACK form's
# first-maximum one-hot subtracts scores from their row maximum. Same result.
PROTECT = -4.0


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: B×N×C, size: B×N×1 (None: all 1), metric: B×N×D -> (B×(N-r)×C, B×(N-r)×1)."""
    metric = _normalise(metric)
    a, b = alternate(metric)
    na = a.shape[1]
    # CLS (row 0 of A) never merges: PROTECT on its row, as one Add of a constant column
    # (on the scores, not on their row maxima: there it joins the MatMul's XNNPACK
    # segment instead of making one of its own)
    scores = matmul(a, b.transpose(-1, -2)) + constant(_protect, na, like=x)  # B×Na×Nb
    if kernels_enabled():  # the rest as one edgeprune kernel (executorch --custom-kernels)
        if size is None:  # every token counts 1
            size = constant(_unit_sizes, x.shape[0], x.shape[1], like=x)
        return torch.ops.edgeprune.tome_merge(x, size, scores, r)
    best = scores.amax(dim=-1)  # B×Na: each A token's best match
    if in_xnnpack_form():
        return _merge_rows(x, size, scores, best, r)
    return merge_scored(x, size, scores, r, best)


def merge_scored(
    x: torch.Tensor,
    size: torch.Tensor | None,
    scores: torch.Tensor,
    r: int,
    best: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The merge from the scores on (index form): x B×N×C, size B×N×1 (None: all 1),
    scores B×Na×Nb with CLS protected, ``best`` their row maxima when known. Also what
    ``edgeprune::tome_merge`` computes in PyTorch (its kernel: runtimes/kernels)."""
    if best is None:
        best = scores.amax(dim=-1)
    merged = select_top(best, r)  # the r A tokens with the best match
    # size-weighted sums as the released merge_wavg: [x·size | size] merged as one
    # tensor (one selection per token set, one MatMul), then divided by the merged size
    c = x.shape[-1]
    xs = F.pad(x, (0, 1), value=1.0) if size is None else torch.cat([x * size, size], dim=-1)
    xa, xb = alternate(xs)
    # each merged token into its best match (argmax over its own row of scores only)
    xb = xb + merged.into_best(scores, xa)
    out = torch.cat([merged.rest_in_order(xa), xb], dim=1)
    size = out[..., c:]
    return out[..., :c] / size, size


def _merge_rows(
    x: torch.Tensor, size: torch.Tensor | None, scores: torch.Tensor, best: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """XNNPACK (ExecuTorch) form of the merge, on the rows of x and size themselves
    (A token j is row 2j, B token j row 2j + 1: nothing is split, concatenated or sliced,
    which XNNPACK does as copies). ``best``: each A token's best score (B×Na).

    The r merged tokens are a TopK of ``best``. The kept rows, the unmerged A tokens in
    token order followed by B, are a second TopK, of a constant key over the rows (-row
    on A rows, -row - 2N on B rows) with -inf scattered on the merged rows: the row
    numbers come out directly. Row copies (``take_rows``) of those and of the merged
    rows; each merged row goes into its best B row through an (N-r)×r MatMul (r·(N-r)·C
    multiply-adds, the index form's merge padded to all rows) whose one-hot entries are
    the size weights s_a / s_new, and the kept row is scaled by s_b / s_new: merge_wavg's
    size-weighted mean, the division done on the weights instead of the rows (equal up
    to rounding; a row nothing merges into is copied exactly). At batch 1 the index ops
    run on 1-D tensors: no flattening copies before the row copies. Every op outside
    XNNPACK costs ~0.2 µs, and more on a first run after another program."""
    b, na, nb = scores.shape
    n = x.shape[1]
    flat = b == 1
    top, idx = torch.topk(best.reshape(-1) if flat else best, r, dim=-1)  # best first
    # index arithmetic with no Python scalar: PT2E (--int8) turns scalars into float
    # tensors, which would make the indices float
    gone = idx + idx  # the merged tokens' rows in x
    keys = constant(_row_keys, n, like=x)
    keep = largest_except(keys.reshape(-1) if flat else keys.expand(b, n), gone)
    # the merged tokens' best scores are the TopK's values: no second row max
    into = best_match(take_rows(scores, idx), top.reshape(b, r, 1))  # B×Nb×r
    into = F.pad(into, (0, 0, na - r, 0))  # B×(N-r)×r: nothing into the unmerged A rows
    if size is None:  # every token counts 1
        size_keep = constant(_unit_sizes, b, n - r, like=x)
        size_gone = constant(_unit_sizes, b, r, like=x)
    else:
        size_keep, size_gone = take_rows(size, keep), take_rows(size, gone)
    size = size_keep + matmul(into, size_gone)
    # the size-weighted mean with the weights divided first (B×(N-r)×1 and B×(N-r)×r),
    # not the rows: x·size and its division by the new size are two passes over the
    # tokens less; an unmerged row is kept as it is (its weight is size / size = 1)
    into = into * size_gone.reshape(b, 1, r) / size  # r×1 -> 1×r is a view
    return take_rows(x, keep) * (size_keep / size) + matmul(into, take_rows(x, gone)), size


def _tome_merge_meta(x, size, scores, r):
    b, n, c = x.shape
    return x.new_empty(b, n - r, c), x.new_empty(b, n - r, 1)


# ToMe's merge from the scores as one op: XNNPACK has no ArgMax, TopK or row gather, and
# the graph form takes ~28 small ops a block, each with its own per-run cost; the
# ExecuTorch kernel (edgeprune/core/backends/kernels/tome_merge.cpp) does them in one call.
# Ties among the best scores go in token order there; torch.topk leaves their order
# unspecified.
define_op(
    "tome_merge(Tensor x, Tensor size, Tensor scores, int r) -> (Tensor, Tensor)",
    "tome_merge.out(Tensor x, Tensor size, Tensor scores, int r, *, Tensor(a!) out_x, "
    "Tensor(b!) out_size) -> (Tensor(a!), Tensor(b!))",
    lambda x, size, scores, r: merge_scored(x, size, scores, r),
    _tome_merge_meta,
)


def _row_keys(n: int) -> torch.Tensor:
    """1×N: -row for A rows (even), -row - 2N for B rows (odd): a TopK of all but the
    merged rows gives the unmerged A rows in order, then the B rows in order."""
    row = torch.arange(n, dtype=torch.float64)
    return torch.where(row % 2 == 0, -row, -row - 2 * n).view(1, n)


class ToMeStatic(VisionTransformer):
    def __init__(self, arch: Arch, plan: TokenPlan):
        super().__init__(arch)
        self.plan = plan
        self.r_per_block = [a - m for a, m in zip(plan.attn_tokens, plan.mlp_tokens, strict=True)]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        size = None
        for blk, r in zip(self.blocks, self.r_per_block, strict=True):
            # log(size) on the keys' axis: B×N×1 -> B×1×1×N is a view, not a transpose
            bias = None if size is None else size.log().reshape(size.shape[0], 1, 1, -1)
            q, k, v = blk.attn.qkv_heads(blk.norm1(x))
            out, _ = blk.attn.attend(q, k, v, bias)
            x = x + blk.attn.proj(out)
            if r > 0:
                x, size = bipartite_merge(x, size, head_sum(k), r)
            x = x + blk.mlp(blk.norm2(x))
        return self.classify(x)


class _ToMeSelector(nn.Module):
    """One ToMe merge alone: metric (seeded random projection standing in for the
    keys, which the block computes anyway), matching and the size-weighted merge."""

    def __init__(self, arch: Arch, r: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        d = arch.embed_dim // arch.num_heads
        self.register_buffer("proj", torch.randn(arch.embed_dim, d, generator=g) * d**-0.5)
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.ones_like(x[:, :, :1])  # as in every block after the first
        out, _ = bipartite_merge(x, size, x @ self.proj, self.r)
        return out


def parse_r(text: str | int | Sequence[int] | None) -> int | tuple[int, ...]:
    """``r``: a token count (``16``, ``"r16"``) or a per-block schedule (a sequence of
    counts, as a budget file holds it)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, list | tuple):
        return tuple(text)
    m = re.fullmatch(r"r?(\d+)", str(text).strip())
    if not m:
        raise EdgepruneError(f"ToMe r '{text}' is not a token count", "e.g. deit_small:tome@r16")
    return int(m.group(1))


class ToMe(Method):
    name = "tome"
    user_options = frozenset({"r"})
    cumulative = False
    static_model = ToMeStatic

    def default_config(self, arch: Arch) -> MethodConfig:
        """r = 16, or as many as a short sequence can merge (a small custom arch)."""
        return self.config_for(min(DEFAULT_R, max(1, (arch.num_tokens - 1) // 2)), arch)

    def config_for(self, r: int | Sequence[int], arch: Arch) -> MethodConfig:
        """A constant ``r`` (clamped per block as ToMe does) or a per-block schedule
        (``check_schedule``: refused where a block merges more than it can)."""
        n0 = arch.num_tokens
        if isinstance(r, list | tuple):
            rs = list(check_schedule(r, arch))
            r = tuple(rs)
        else:
            max_r = (n0 - 1) // 2
            if not 1 <= r <= max_r:
                raise EdgepruneError(
                    f"ToMe r={r} does not fit a sequence of {n0} tokens",
                    f"r merges tokens in every block: use 1 ≤ r ≤ {max_r} for {arch.name}",
                )
            rs = merge_plan(n0, arch.depth, r)
        locs, ratios, n = [], [], n0
        for b, rb in enumerate(rs):
            if rb:
                locs.append(b)
                ratios.append(round((n - rb) / n, 4))
                n -= rb
        return MethodConfig(tuple(locs), tuple(ratios), {"r": r})

    def config_from_param(self, param: str | None, arch: Arch) -> MethodConfig:
        return self.default_config(arch) if param is None else self.config_for(parse_r(param), arch)

    def with_overrides(self, cfg, arch, keep=None, locs=None) -> MethodConfig:
        if keep is not None or locs is not None:
            raise EdgepruneError(
                "ToMe has no keep ratios or locations", "set the merge count with --tome-r"
            )
        return self.config_for(parse_r(cfg.options.get("r", DEFAULT_R)), arch)

    def validate(self, cfg: MethodConfig, arch: Arch) -> None:
        self.config_for(parse_r(cfg.options.get("r", DEFAULT_R)), arch)

    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        rs = self.r_per_block(cfg, arch)
        attn, mlp, stages, n = [], [], [], arch.num_tokens
        for b, rb in enumerate(rs):
            attn.append(n)
            if rb:
                stages.append(SelectorStage(b, "mid", n, n - rb))
                n -= rb
            mlp.append(n)
        return self.make_plan(arch, cfg, attn, mlp, stages)

    def r_per_block(self, cfg: MethodConfig, arch: Arch) -> list[int]:
        """Tokens merged in each block: a constant r clamped as ToMe does, or the
        per-block schedule ``cfg.options["r"]`` as given (checked)."""
        r = parse_r(cfg.options.get("r", DEFAULT_R))
        if isinstance(r, tuple):
            return list(check_schedule(r, arch))
        return merge_plan(arch.num_tokens, arch.depth, r)

    def selector_module(self, arch: Arch, stage: SelectorStage) -> nn.Module:
        return _ToMeSelector(arch, stage.tokens_in - stage.tokens_out)

    def selector_macs(self, arch: Arch, plan: TokenPlan) -> list[int]:
        c, d = arch.embed_dim, arch.embed_dim // arch.num_heads
        out = []
        for s in plan.selectors:
            n, r = s.tokens_in, s.tokens_in - s.tokens_out
            na, nb = (n + 1) // 2, n // 2
            # mean of keys over heads, L2 normalise, A·Bᵀ, size weighting and the merge
            out.append(n * c + 3 * n * d + na * nb * d + 2 * n * c + r * c + (n - r) * c)
        return out
