// edgeprune::tome_merge.out — ToMe's bipartite merge after the similarity scores, as one
// ExecuTorch kernel (Bolya et al., ICLR 2023; facebookresearch/ToMe, tome/merge.py).
//
// The XNNPACK delegate computes the scores (keys summed over heads, unit rows, A·Bᵀ and
// CLS protection); this kernel does the rest in one call, where the graph form needs ~28
// small ops (a row max-pool, two TopKs, a scatter, four row copies and the one-hot
// merge), each with its own per-run cost in the delegate or the portable runtime.
//
// Schema (edgeprune/core/methods/tome.py registers the same one in PyTorch, with the
// reference implementation):
//   tome_merge.out(Tensor x, Tensor size, Tensor scores, int r, *,
//                  Tensor(a!) out_x, Tensor(b!) out_size) -> (Tensor(a!), Tensor(b!))
//   x: B×N×C, size: B×N×1, scores: B×Na×Nb (Na = ceil(N/2) A tokens at even rows,
//   Nb = floor(N/2) B tokens at odd rows) -> out_x: B×(N-r)×C, out_size: B×(N-r)×1.
//
// Each A token's best B match (first maximum); the r A tokens with the highest best
// score (ties in token order) merge into their match; out: the unmerged A tokens in
// token order, then B, each merged B token the size-weighted mean
// (x_b·s_b + Σ x_a·s_a) / (s_b + Σ s_a), as merge_wavg. float32, any batch size.
//
// Built on this machine against the executorch wheel's headers by
// edgeprune/core/backends/executorch_kernels.py; for a phone, compile it into
// executor_runner (docs/devices.md: "Over adb (Android)").

#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Kernel;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;

bool shapes_ok(const Tensor& x, const Tensor& size, const Tensor& scores, int64_t r,
               const Tensor& out_x, const Tensor& out_size) {
  if (x.dim() != 3 || size.dim() != 3 || scores.dim() != 3 || out_x.dim() != 3 ||
      out_size.dim() != 3) {
    return false;
  }
  for (const Tensor* t : {&x, &size, &scores, &out_x, &out_size}) {
    // float32, contiguous rows (the kernel walks raw pointers)
    if (t->scalar_type() != ScalarType::Float ||
        !executorch::runtime::tensor_is_contiguous(*t)) {
      return false;
    }
  }
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  const int64_t na = (n + 1) / 2, nb = n / 2;
  return nb >= 1 && size.size(0) == b && size.size(1) == n && size.size(2) == 1 &&
         scores.size(0) == b &&
         scores.size(1) == na && scores.size(2) == nb && r >= 0 && r < na &&
         out_x.size(0) == b && out_x.size(1) == n - r && out_x.size(2) == c &&
         out_size.size(0) == b && out_size.size(1) == n - r && out_size.size(2) == 1;
}

void merge_one(const float* x, const float* size, const float* scores, int64_t n, int64_t c,
               int64_t r, float* out_x, float* out_size, std::vector<float>& best,
               std::vector<int64_t>& dst, std::vector<int64_t>& order,
               std::vector<char>& merged, std::vector<char>& hit) {
  const int64_t na = (n + 1) / 2, nb = n / 2;
  for (int64_t i = 0; i < na; ++i) {  // A token i's best B match: the first maximum
    const float* row = scores + i * nb;
    int64_t j_best = 0;
    float v = row[0];
    for (int64_t j = 1; j < nb; ++j) {
      if (row[j] > v) {
        v = row[j];
        j_best = j;
      }
    }
    best[i] = v;
    dst[i] = j_best;
    order[i] = i;
  }
  std::partial_sort(order.begin(), order.begin() + r, order.begin() + na,
                    [&](int64_t p, int64_t q) {
                      return best[p] > best[q] || (best[p] == best[q] && p < q);
                    });
  std::fill(merged.begin(), merged.begin() + na, 0);
  std::fill(hit.begin(), hit.begin() + nb, 0);
  for (int64_t t = 0; t < r; ++t) {
    merged[order[t]] = 1;
    hit[dst[order[t]]] = 1;
  }
  int64_t o = 0;  // the unmerged A tokens (row 2i) in token order, copied as they are
  for (int64_t i = 0; i < na; ++i) {
    if (merged[i]) continue;
    std::memcpy(out_x + o * c, x + 2 * i * c, c * sizeof(float));
    out_size[o] = size[2 * i];
    ++o;
  }
  float* bx = out_x + o * c;  // then the B tokens (row 2j + 1) in token order
  float* bs = out_size + o;
  for (int64_t j = 0; j < nb; ++j) bs[j] = size[2 * j + 1];
  for (int64_t t = 0; t < r; ++t) bs[dst[order[t]]] += size[2 * order[t]];
  for (int64_t j = 0; j < nb; ++j) {
    const float* src = x + (2 * j + 1) * c;
    float* d = bx + j * c;
    if (!hit[j]) {  // nothing merges into it: kept exactly
      std::memcpy(d, src, c * sizeof(float));
      continue;
    }
    const float w = size[2 * j + 1] / bs[j];
    for (int64_t k = 0; k < c; ++k) d[k] = src[k] * w;
  }
  for (int64_t t = 0; t < r; ++t) {  // merged rows in score order, as the TopK gives them
    const int64_t a = order[t], j = dst[a];
    const float w = size[2 * a] / bs[j];
    const float* src = x + 2 * a * c;
    float* d = bx + j * c;
    for (int64_t k = 0; k < c; ++k) d[k] += src[k] * w;
  }
}

void tome_merge_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  // the stack holds the schema's arguments in order (then the returned outs again)
  if (stack.size() < 6) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const Tensor& x = stack[0]->toTensor();
  const Tensor& size = stack[1]->toTensor();
  const Tensor& scores = stack[2]->toTensor();
  const int64_t r = stack[3]->toInt();
  Tensor& out_x = stack[4]->toTensor();
  Tensor& out_size = stack[5]->toTensor();
  if (!shapes_ok(x, size, scores, r, out_x, out_size)) {
    ET_LOG(Error, "edgeprune::tome_merge.out: shapes or dtypes do not match the schema");
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  const int64_t na = (n + 1) / 2, nb = n / 2;
  std::vector<float> best(na);
  std::vector<int64_t> dst(na), order(na);
  std::vector<char> merged(na), hit(nb);
  const float* xp = x.const_data_ptr<float>();
  const float* sp = size.const_data_ptr<float>();
  const float* scp = scores.const_data_ptr<float>();
  float* ox = out_x.mutable_data_ptr<float>();
  float* os = out_size.mutable_data_ptr<float>();
  for (int64_t i = 0; i < b; ++i) {
    merge_one(xp + i * n * c, sp + i * n, scp + i * na * nb, n, c, r, ox + i * (n - r) * c,
              os + i * (n - r), best, dst, order, merged, hit);
  }
}

const Kernel kKernels[] = {Kernel("edgeprune::tome_merge.out", tome_merge_out)};
const auto kRegistered =
    executorch::runtime::register_kernels(Span<const Kernel>(kKernels, 1));

}  // namespace
