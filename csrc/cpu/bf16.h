// bfloat16 on the CPU. The CPU ops take bfloat16 values and run their float32 kernels on them: a product of two
// bfloat16 numbers is exact in float32, so a float32 GEMM of the upcast operands is a bfloat16 GEMM with
// float32 accumulation (up to the order of the sums); the pointwise math runs in float32, LSTM's cell state is
// carried in float32 across steps, and the workspace a forward returns for its backward stays float32. Outputs
// and gradients are returned in bfloat16 (the arguments' dtype). This gives bfloat16 its numerics on every CPU
// op; the LSTM layer also runs natively (its GEMMs at the bfloat16 rate, csrc/cpu/lstm_layer.cpp), the others
// run at the float32 rate.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <ATen/core/List.h>

#include <optional>
#include <vector>

namespace rnnext::cpu::bf16 {

inline bool active(const at::Tensor& input) {
  return input.scalar_type() == at::kBFloat16 && input.device().is_cpu();
}

// A value argument of a bfloat16 call (bfloat16 like the input, else an error naming it), as float32.
inline at::Tensor up(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, op, ": expected ", name, " to have the dtype of input (BFloat16), got ",
              t.scalar_type());
  return t.to(at::kFloat);
}
inline std::optional<at::Tensor> up(const char* op, const char* name, const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(up(op, name, *t)) : std::nullopt;
}

inline std::vector<at::Tensor> up(const char* op, const char* name, at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(up(op, name, t));
  return out;
}
inline c10::List<std::optional<at::Tensor>> up(const char* op, const char* name,
                                               const c10::List<std::optional<at::Tensor>>& ts) {
  c10::List<std::optional<at::Tensor>> out;
  for (const std::optional<at::Tensor>& t : ts) out.push_back(up(op, name, t));
  return out;
}

// A workspace argument of a bfloat16 backward (what the bfloat16 forward returned for it): float32.
inline const at::Tensor& workspace(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": expected ", name,
              " to be float32 (a bfloat16 forward keeps its workspace in float32), got ", t.scalar_type());
  return t;
}

inline at::Tensor down(const at::Tensor& t) { return t.to(at::kBFloat16); }

}  // namespace rnnext::cpu::bf16
