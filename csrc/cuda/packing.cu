// CUDA kernels of the packed-sequence gather and scatter: one thread per element, the step of a packed row
// found by binary search in the step offsets.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <vector>

#include "cuda/common.cuh"

namespace rnnext::cuda {
namespace {

using at::Tensor;

struct DeviceLayout {
  int64_t T = 0, B = 0, N = 0;
  Tensor offsets;  // (T + 1) device int64
  Tensor order;    // (B) device int64, or undefined
};

DeviceLayout make_layout(const char* op, const Tensor& like, const Tensor& batch_sizes,
                         const std::optional<Tensor>& sorted_indices, int64_t batch, int64_t total_rows) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong && batch_sizes.is_cpu(), op,
              ": expected batch_sizes as a 1-D int64 CPU tensor");
  const Tensor bs = batch_sizes.contiguous();
  DeviceLayout l;
  l.T = bs.numel();
  l.B = batch;
  std::vector<int64_t> off(l.T + 1, 0);
  for (int64_t t = 0; t < l.T; ++t) {
    const int64_t v = bs.const_data_ptr<int64_t>()[t];
    TORCH_CHECK(v >= 1 && (t == 0 || v <= bs.const_data_ptr<int64_t>()[t - 1]), op,
                ": expected batch_sizes positive and non-increasing, got batch_sizes[", t, "] = ", v);
    off[t + 1] = off[t] + v;
  }
  TORCH_CHECK(l.T == 0 || bs.const_data_ptr<int64_t>()[0] == batch, op,
              ": expected batch_sizes[0] to equal the batch size (", batch, ")");
  TORCH_CHECK(total_rows < 0 || off[l.T] == total_rows, op, ": expected batch_sizes to sum to ", total_rows);
  l.N = off[l.T];
  l.offsets = upload(off, like.device());
  if (sorted_indices.has_value()) {
    const Tensor si = sorted_indices->to(at::kCPU).contiguous();
    TORCH_CHECK(si.dim() == 1 && si.numel() == batch && si.scalar_type() == at::kLong, op,
                ": expected sorted_indices of ", batch, " int64 entries");
    std::vector<char> seen(batch, 0);
    for (int64_t j = 0; j < batch; ++j) {
      const int64_t b = si.const_data_ptr<int64_t>()[j];
      TORCH_CHECK(b >= 0 && b < batch && !seen[b], op, ": expected sorted_indices to be a permutation");
      seen[b] = 1;
    }
    l.order = upload(std::vector<int64_t>(si.const_data_ptr<int64_t>(), si.const_data_ptr<int64_t>() + batch),
                     like.device());
  }
  return l;
}

__device__ __forceinline__ int64_t step_of(const int64_t* offsets, int64_t T, int64_t r) {
  int64_t lo = 0, hi = T;  // offsets[lo] <= r < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= r) lo = mid; else hi = mid;
  }
  return lo;
}

template <typename T>
__global__ void gather_kernel(int64_t N, int64_t F, int64_t steps, int64_t T_in, int64_t B, bool batch_first,
                              const int64_t* offsets, const int64_t* order, const T* in, T* out) {
  RNNEXT_CUDA_LOOP(idx, N * F) {
    const int64_t r = idx / F, f = idx % F;
    const int64_t t = step_of(offsets, steps, r), j = r - offsets[t];
    const int64_t b = order ? order[j] : j;
    out[idx] = in[(batch_first ? b * T_in + t : t * B + b) * F + f];
  }
}

template <typename T>
__global__ void scatter_kernel(int64_t T_out, int64_t B, int64_t F, int64_t steps, bool batch_first,
                               const int64_t* offsets, const int64_t* order, const T* data, T pad, T* out) {
  RNNEXT_CUDA_LOOP(idx, T_out * B * F) {
    const int64_t f = idx % F, j = (idx / F) % B, t = idx / (F * B);
    const int64_t b = order ? order[j] : j;
    const bool real = t < steps && j < offsets[t + 1] - offsets[t];
    out[(batch_first ? b * T_out + t : t * B + b) * F + f] = real ? data[(offsets[t] + j) * F + f] : pad;
  }
}

Tensor packed_gather_cuda(const Tensor& input, const Tensor& batch_sizes, const std::optional<Tensor>& sorted_indices,
                          bool batch_first, int64_t total_rows) {
  const char* op = "rnnext::packed_gather";
  TORCH_CHECK(input.is_cuda() && input.dim() >= 2, op, ": expected a CUDA input of at least 2 dimensions");
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t T_in = input.size(batch_first ? 1 : 0), B = input.size(batch_first ? 0 : 1);
  const DeviceLayout l = make_layout(op, input, batch_sizes, sorted_indices, B, total_rows);
  TORCH_CHECK(l.T <= T_in, op, ": batch_sizes has ", l.T, " steps but the input only ", T_in);
  std::vector<int64_t> shape{total_rows};
  for (int64_t d = 2; d < input.dim(); ++d) shape.push_back(input.size(d));
  Tensor out = at::empty(shape, input.options());
  const int64_t F = total_rows > 0 ? out.numel() / total_rows : 0;
  if (out.numel() == 0) return out;
  const Tensor x = input.contiguous();
  AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "packed_gather_cuda", [&] {
    gather_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
        total_rows, F, l.T, T_in, B, batch_first, l.offsets.const_data_ptr<int64_t>(),
        l.order.defined() ? l.order.const_data_ptr<int64_t>() : nullptr, x.const_data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor packed_scatter_cuda(const Tensor& data, const Tensor& batch_sizes, const std::optional<Tensor>& sorted_indices,
                           bool batch_first, const at::Scalar& padding_value, int64_t batch, int64_t total_length) {
  const char* op = "rnnext::packed_scatter";
  TORCH_CHECK(data.is_cuda() && data.dim() >= 1, op, ": expected CUDA data of at least 1 dimension");
  const c10::cuda::CUDAGuard guard(data.device());
  const DeviceLayout l = make_layout(op, data, batch_sizes, sorted_indices, batch, data.size(0));
  TORCH_CHECK(total_length >= l.T, op, ": expected total_length to be at least ", l.T, ", got ", total_length);
  std::vector<int64_t> shape = batch_first ? std::vector<int64_t>{batch, total_length}
                                           : std::vector<int64_t>{total_length, batch};
  for (int64_t d = 1; d < data.dim(); ++d) shape.push_back(data.size(d));
  Tensor out = at::empty(shape, data.options());
  if (out.numel() == 0) return out;
  const int64_t F = out.numel() / (total_length * batch);
  const Tensor x = data.contiguous();
  AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "packed_scatter_cuda", [&] {
    scatter_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
        total_length, batch, F, l.T, batch_first, l.offsets.const_data_ptr<int64_t>(),
        l.order.defined() ? l.order.const_data_ptr<int64_t>() : nullptr, x.const_data_ptr<scalar_t>(),
        padding_value.to<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("packed_gather", &packed_gather_cuda);
  m.impl("packed_scatter", &packed_scatter_cuda);
}

}  // namespace rnnext::cuda
