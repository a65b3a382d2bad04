// Argument checks shared by the CPU kernels: each failure names the op, the argument and what was expected.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

namespace rnnext::cpu {

inline void check_float_cpu(const char* op, const char* name, const at::Tensor& t) {
  // (bfloat16 is converted or dispatched before these checks: cpu/bf16.h.)
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": expected ", name,
              " to be float32, float64 or bfloat16 on the CPU",
              t.scalar_type() == at::kHalf ? " (float16 runs on CUDA only; use .bfloat16() or .float() on the CPU)"
                                           : "",
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": expected ", name, " on the CPU, got ", t.device());
}

inline void check_same(const char* op, const char* ref_name, const at::Tensor& ref, const char* name,
                       const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to have ", dim, " dimensions ", layout, ", got ", t.dim(),
              " dimensions with shape ", t.sizes());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected, ", got ", t.sizes());
}

// The batch sizes of a PackedSequence: 1-D int64 on the CPU, positive, non-increasing, summing to total_rows
// (unless total_rows < 0), with batch_sizes[0] == batch. Returns them as a vector.
inline std::vector<int64_t> check_batch_sizes(const char* op, const at::Tensor& batch_sizes, int64_t total_rows,
                                              int64_t batch) {
  TORCH_CHECK(batch_sizes.dim() == 1, op, ": expected batch_sizes to be 1-D, got shape ", batch_sizes.sizes());
  TORCH_CHECK(batch_sizes.scalar_type() == at::kLong, op, ": expected batch_sizes to be int64, got ",
              batch_sizes.scalar_type());
  TORCH_CHECK(batch_sizes.device().is_cpu(), op, ": expected batch_sizes on the CPU, got ", batch_sizes.device());
  const at::Tensor bs_c = batch_sizes.contiguous();
  const int64_t* bs = bs_c.const_data_ptr<int64_t>();
  const int64_t T = bs_c.numel();
  std::vector<int64_t> out(bs, bs + T);
  int64_t sum = 0;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(out[t] >= 1, op, ": expected every batch_sizes entry to be at least 1, got batch_sizes[", t,
                "] = ", out[t]);
    TORCH_CHECK(t == 0 || out[t] <= out[t - 1], op, ": expected batch_sizes to be non-increasing, got batch_sizes[",
                t, "] = ", out[t], " > batch_sizes[", t - 1, "] = ", out[t - 1]);
    sum += out[t];
  }
  TORCH_CHECK(total_rows < 0 || sum == total_rows, op, ": expected batch_sizes to sum to the number of packed rows (", total_rows,
              "), got ", sum);
  TORCH_CHECK(T == 0 || out[0] == batch, op, ": expected batch_sizes[0] to equal the batch size of hx (", batch,
              "), got ", T == 0 ? 0 : out[0]);
  return out;
}

// An optional permutation of [0, n) (1-D int64 on the CPU, every value once). Returns it as a vector, empty
// when absent.
inline std::vector<int64_t> check_permutation(const char* op, const char* name, const std::optional<at::Tensor>& perm,
                                              int64_t n) {
  if (!perm.has_value()) return {};
  const at::Tensor& p = *perm;
  TORCH_CHECK(p.dim() == 1 && p.size(0) == n, op, ": expected ", name, " to be 1-D of size ", n, ", got shape ",
              p.sizes());
  TORCH_CHECK(p.scalar_type() == at::kLong, op, ": expected ", name, " to be int64, got ", p.scalar_type());
  TORCH_CHECK(p.device().is_cpu(), op, ": expected ", name, " on the CPU, got ", p.device());
  const at::Tensor pc = p.contiguous();
  std::vector<int64_t> out(pc.const_data_ptr<int64_t>(), pc.const_data_ptr<int64_t>() + n);
  std::vector<char> seen(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(out[i] >= 0 && out[i] < n && !seen[out[i]], op, ": expected ", name, " to be a permutation of 0..",
                n - 1, ", got ", name, "[", i, "] = ", out[i]);
    seen[out[i]] = 1;
  }
  return out;
}

}  // namespace rnnext::cpu
