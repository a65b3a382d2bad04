// CPU kernels of the packed-sequence gather (padded -> PackedSequence data) and scatter (PackedSequence data
// -> padded). Both are row copies of any dtype and trailing feature shape, parallel over rows, one pass.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/checks.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;

// Rows copied per parallel task, at least (a row may be a few bytes: token ids).
constexpr int64_t kRowGrain = 256;

struct PackLayout {
  std::vector<int64_t> bs;      // batch_sizes
  std::vector<int64_t> offset;  // first packed row of each step
  std::vector<int64_t> order;   // sorted slot -> batch entry
  int64_t T = 0, B = 0, N = 0;
};

PackLayout make_layout(const char* op, const Tensor& batch_sizes, const std::optional<Tensor>& sorted_indices,
                       int64_t batch, int64_t total_rows) {
  TORCH_CHECK(batch >= 0, op, ": expected batch >= 0, got ", batch);
  PackLayout l;
  l.bs = check_batch_sizes(op, batch_sizes, total_rows, batch);
  l.T = static_cast<int64_t>(l.bs.size());
  l.B = batch;
  l.N = total_rows;
  l.offset.resize(l.T);
  for (int64_t t = 0, acc = 0; t < l.T; acc += l.bs[t], ++t) l.offset[t] = acc;
  l.order = check_permutation(op, "sorted_indices", sorted_indices, batch);
  return l;
}

// The step t whose packed rows contain row r (offsets are increasing).
int64_t step_of_row(const PackLayout& l, int64_t r) {
  return static_cast<int64_t>(std::upper_bound(l.offset.begin(), l.offset.end(), r) - l.offset.begin()) - 1;
}

// Bytes of one (time, batch) row of a tensor whose first two dimensions are time and batch (either order).
int64_t row_bytes(const Tensor& t, int64_t lead_dims) {
  int64_t n = t.element_size();
  for (int64_t d = lead_dims; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

Tensor packed_gather_cpu(const Tensor& input, const Tensor& batch_sizes, const std::optional<Tensor>& sorted_indices,
                         bool batch_first, int64_t total_rows) {
  const char* op = "rnnext::packed_gather";
  TORCH_CHECK(input.dim() >= 2, op, ": expected input of at least 2 dimensions (",
              batch_first ? "batch, time" : "time, batch", ", *), got shape ", input.sizes());
  TORCH_CHECK(input.device().is_cpu(), op, ": expected input on the CPU, got ", input.device());
  const int64_t T_in = input.size(batch_first ? 1 : 0), B = input.size(batch_first ? 0 : 1);
  const PackLayout l = make_layout(op, batch_sizes, sorted_indices, B, total_rows);
  TORCH_CHECK(l.T <= T_in, op, ": batch_sizes has ", l.T, " steps but the input only ", T_in,
              " (a length is longer than the padded sequence)");
  std::vector<int64_t> out_shape{total_rows};
  for (int64_t d = 2; d < input.dim(); ++d) out_shape.push_back(input.size(d));
  Tensor out = at::empty(out_shape, input.options());
  if (total_rows == 0) return out;
  const Tensor x = input.contiguous();
  const int64_t rb = row_bytes(x, 2);
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, total_rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    int64_t t = step_of_row(l, r0);
    for (int64_t r = r0; r < r1; ++r) {
      while (t + 1 < l.T && r >= l.offset[t + 1]) ++t;
      const int64_t b = l.order.empty() ? r - l.offset[t] : l.order[r - l.offset[t]];
      const int64_t row = batch_first ? b * T_in + t : t * B + b;
      std::memcpy(dst + r * rb, src + row * rb, rb);
    }
  });
  return out;
}

Tensor packed_scatter_cpu(const Tensor& data, const Tensor& batch_sizes, const std::optional<Tensor>& sorted_indices,
                          bool batch_first, const at::Scalar& padding_value, int64_t batch, int64_t total_length) {
  const char* op = "rnnext::packed_scatter";
  TORCH_CHECK(data.dim() >= 1, op, ": expected data of at least 1 dimension (rows, *), got a scalar");
  TORCH_CHECK(data.device().is_cpu(), op, ": expected data on the CPU, got ", data.device());
  const PackLayout l = make_layout(op, batch_sizes, sorted_indices, batch, data.size(0));
  TORCH_CHECK(total_length >= l.T, op, ": expected total_length to be at least the length of the longest ",
              "sequence (", l.T, "), got ", total_length);
  const int64_t T_out = total_length, B = l.B;
  std::vector<int64_t> out_shape = batch_first ? std::vector<int64_t>{B, T_out} : std::vector<int64_t>{T_out, B};
  for (int64_t d = 1; d < data.dim(); ++d) out_shape.push_back(data.size(d));
  Tensor out = at::empty(out_shape, data.options());
  if (out.numel() == 0) return out;
  const Tensor x = data.contiguous();
  const int64_t rb = row_bytes(x, 1);
  std::vector<int64_t> feat(out_shape.begin() + 2, out_shape.end());
  const Tensor pad_row = at::full(feat, padding_value, data.options());  // one row of padding, any dtype
  const char* pad = static_cast<const char*>(pad_row.const_data_ptr());
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  // Every output row, (t, slot j) with b = order[j]: data row offset[t] + j while j < bs[t], else padding.
  at::parallel_for(0, T_out * B, kRowGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / B, j = i % B;
      const int64_t b = l.order.empty() ? j : l.order[j];
      char* row = dst + (batch_first ? b * T_out + t : t * B + b) * rb;
      if (t < l.T && j < l.bs[t])
        std::memcpy(row, src + (l.offset[t] + j) * rb, rb);
      else
        std::memcpy(row, pad, rb);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("packed_gather", &packed_gather_cpu);
  m.impl("packed_scatter", &packed_scatter_cpu);
}

}  // namespace rnnext::cpu
