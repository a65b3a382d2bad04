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

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <utility>
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
// The value arguments of a bfloat16 call that runs on them as they are (null entries: absent optionals): each
// bfloat16 like the input, else the error up() gives.
inline void check(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> args) {
  for (const auto& [name, t] : args)
    TORCH_CHECK(t == nullptr || t->scalar_type() == at::kBFloat16, op, ": expected ", name,
                " to have the dtype of input (BFloat16), got ", t->scalar_type());
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

// A bfloat16 call's value arguments (tensors or optional ones) as a function object, for a wrapper that runs
// its kernels either on float32 copies (Up) or on the bfloat16 tensors as they are (Checked: each checked
// bfloat16, else the error up() gives).
struct Up {
  const char* op;
  template <typename T>
  auto operator()(const char* name, const T& t) const {
    return up(op, name, t);
  }
};
struct Checked {
  const char* op;
  const at::Tensor& operator()(const char* name, const at::Tensor& t) const {
    check(op, {{name, &t}});
    return t;
  }
  const std::optional<at::Tensor>& operator()(const char* name, const std::optional<at::Tensor>& t) const {
    check(op, {{name, t.has_value() ? &*t : nullptr}});
    return t;
  }
};

// A workspace argument of a bfloat16 backward (what the bfloat16 forward returned for it): float32.
inline const at::Tensor& workspace(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": expected ", name,
              " to be float32 (a bfloat16 forward keeps its workspace in float32), got ", t.scalar_type());
  return t;
}

inline at::Tensor down(const at::Tensor& t) { return t.to(at::kBFloat16); }

// RNNEXT_BF16_UPCAST=1: the ops that run bfloat16 natively on AVX512-BF16 CPUs (the GRU/RNN layers, SPINN) run
// on float32 copies instead, as elsewhere (how the tests reach that path on every CPU).
inline bool upcast_forced() {
  const char* upcast = std::getenv("RNNEXT_BF16_UPCAST");
  return upcast != nullptr && upcast[0] == '1';
}

// One float32 value rounded to bfloat16 (raw 16-bit pattern): nearest, ties to even; NaN stays NaN (quiet);
// denormals become zero, as AVX512-BF16's conversion makes them (branch-free enough to vectorize).
inline uint16_t round_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN: keep it quiet
  if ((u & 0x7F800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);          // denormal: to zero
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// A bfloat16 value (raw 16-bit pattern) as float32 (exact).
inline float value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace rnnext::cpu::bf16
