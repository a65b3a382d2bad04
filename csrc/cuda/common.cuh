// Launch helpers shared by the CUDA kernels: argument checks, grid sizes, the current stream.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rnnext::cuda {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n, int64_t threads = kThreads) {
  return std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535));
}

inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

inline void check_cuda(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.is_cuda(), op, ": expected ", name, " on a CUDA device, got ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on ", ref.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " of dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
}

// Host integers to the device without synchronizing: staged through pinned memory (the caching host
// allocator keeps it alive until the copy has run).
inline at::Tensor upload(const std::vector<int64_t>& v, const at::Device& device) {
  const int64_t n = std::max<int64_t>(static_cast<int64_t>(v.size()), 1);
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(v.begin(), v.end(), host.data_ptr<int64_t>());
  return host.to(device, /*non_blocking=*/true);
}

// A named handle for a temporary view, where an ATen out= function takes a non-const reference.
inline at::Tensor& lvalue(at::Tensor&& t) { return t; }

// Grid-stride loop over [0, n).
#define RNNEXT_CUDA_LOOP(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

}  // namespace rnnext::cuda
