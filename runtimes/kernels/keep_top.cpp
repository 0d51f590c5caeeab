// edgeprune::keep_top.out — keep the k rows with the largest keys, and sum the others
// weighted, as one ExecuTorch kernel (SPViT's token selection and package token).
//
// Schema (edgeprune/methods/tokenops.py registers the same one in PyTorch, with the
// reference implementation):
//   keep_top.out(Tensor x, Tensor key, Tensor weight, int k, *,
//                Tensor(a!) out_rows, Tensor(b!) out_rest) -> (Tensor(a!), Tensor(b!))
//   x: B×N×C, key, weight: B×N -> out_rows: B×k×C, the rows of the k largest keys,
//   largest first (ties in token order); out_rest: B×1×C, Σ weight_i · x_i over the
//   N - k rows not kept (not divided by Σ weight_i, as SPViT's package token).
// The graph form takes a TopK, a scatter of the dropped-row mask, a product, a MatMul
// (whose dynamic operand XNNPACK packs at every run) and a row copy.

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

bool shapes_ok(const Tensor& x, const Tensor& key, const Tensor& weight, int64_t k,
               const Tensor& rows, const Tensor& rest) {
  if (x.dim() != 3 || key.dim() != 2 || weight.dim() != 2 || rows.dim() != 3 ||
      rest.dim() != 3) {
    return false;
  }
  for (const Tensor* t : {&x, &key, &weight, &rows, &rest}) {
    if (t->scalar_type() != ScalarType::Float) return false;
  }
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  return key.size(0) == b && key.size(1) == n && weight.size(0) == b && weight.size(1) == n &&
         k >= 1 && k <= n && rows.size(0) == b && rows.size(1) == k && rows.size(2) == c &&
         rest.size(0) == b && rest.size(1) == 1 && rest.size(2) == c;
}

void keep_top_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  if (stack.size() < 6) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const Tensor& x = stack[0]->toTensor();
  const Tensor& key = stack[1]->toTensor();
  const Tensor& weight = stack[2]->toTensor();
  const int64_t k = stack[3]->toInt();
  Tensor& rows = stack[4]->toTensor();
  Tensor& rest = stack[5]->toTensor();
  if (!shapes_ok(x, key, weight, k, rows, rest)) {
    ET_LOG(Error, "edgeprune::keep_top.out: shapes or dtypes do not match the schema");
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  std::vector<int64_t> order(n);
  std::vector<char> kept(n);
  for (int64_t i = 0; i < b; ++i) {
    const float* xb = x.const_data_ptr<float>() + i * n * c;
    const float* kb = key.const_data_ptr<float>() + i * n;
    const float* wb = weight.const_data_ptr<float>() + i * n;
    float* rb = rows.mutable_data_ptr<float>() + i * k * c;
    float* sb = rest.mutable_data_ptr<float>() + i * c;
    for (int64_t j = 0; j < n; ++j) order[j] = j;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t p, int64_t q) {
      return kb[p] > kb[q] || (kb[p] == kb[q] && p < q);
    });
    std::fill(kept.begin(), kept.end(), 0);
    for (int64_t t = 0; t < k; ++t) {
      kept[order[t]] = 1;
      std::memcpy(rb + t * c, xb + order[t] * c, c * sizeof(float));
    }
    std::fill(sb, sb + c, 0.0f);
    for (int64_t j = 0; j < n; ++j) {  // the rows not kept, in token order
      if (kept[j]) continue;
      const float w = wb[j];
      const float* src = xb + j * c;
      for (int64_t q = 0; q < c; ++q) sb[q] += w * src[q];
    }
  }
}

const Kernel kKernels[] = {Kernel("edgeprune::keep_top.out", keep_top_out)};
const auto kRegistered =
    executorch::runtime::register_kernels(Span<const Kernel>(kKernels, 1));

}  // namespace
