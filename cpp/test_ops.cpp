// A libtorch program that uses the rnnext ops the way a C++ deployment would: through the dispatcher, with
// no Python. Each op is compared with a reference written in ATen; the exit status says whether all matched.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <string>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, double tol) {
  const bool same_shape = got.sizes() == want.sizes();
  const double err = same_shape ? (got - want).abs().max().item<double>() : -1.0;
  const bool ok = same_shape && err <= tol;
  std::printf("%-44s %s (max error %.3g)\n", what.c_str(), ok ? "ok" : "FAILED", err);
  if (!ok) ++failures;
}

// One LSTM step in plain ATen: the reference.
std::tuple<at::Tensor, at::Tensor> reference_cell(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                  const at::Tensor& b_ih, const at::Tensor& b_hh) {
  const auto gates = (at::matmul(x, w_ih.t()) + b_ih + at::matmul(h, w_hh.t()) + b_hh).chunk(4, 1);
  const auto c1 = at::sigmoid(gates[1]) * c + at::sigmoid(gates[0]) * at::tanh(gates[2]);
  const auto h1 = at::sigmoid(gates[3]) * at::tanh(c1);
  return {h1, c1};
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t T = 6, B = 3, I = 5, H = 7;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto x = at::randn({T, B, I}, opts), h0 = at::randn({B, H}, opts), c0 = at::randn({B, H}, opts);
  const auto w_ih = at::randn({4 * H, I}, opts), w_hh = at::randn({4 * H, H}, opts);
  const auto b_ih = at::randn({4 * H}, opts), b_hh = at::randn({4 * H}, opts);

  auto cell = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("rnnext::lstm_cell", "")
                  .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  auto [h1, c1, gates] = cell.call(x[0], h0, c0, w_ih, w_hh, b_ih, b_hh);
  auto [h1_ref, c1_ref] = reference_cell(x[0], h0, c0, w_ih, w_hh, b_ih, b_hh);
  expect_close("rnnext::lstm_cell h", h1, h1_ref, 1e-12);
  expect_close("rnnext::lstm_cell c", c1, c1_ref, 1e-12);

  auto layer = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("rnnext::lstm_layer", "")
                   .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                       const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                       const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                       const std::optional<at::Tensor>&, bool, bool, bool, const std::optional<at::Tensor>&)>();
  for (const bool reverse : {false, true}) {
    auto [y, hT, cT, g, cells] = layer.call(x, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt, std::nullopt,
                                            /*batch_first=*/false, reverse, /*train=*/false, std::nullopt);
    at::Tensor h = h0, c = c0;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      std::tie(h, c) = reference_cell(x[t], h, c, w_ih, w_hh, b_ih, b_hh);
      expect_close(std::string("rnnext::lstm_layer output, step ") + std::to_string(t) + (reverse ? " (reverse)" : ""),
                   y[t], h, 1e-12);
    }
    expect_close(std::string("rnnext::lstm_layer h_n") + (reverse ? " (reverse)" : ""), hT, h, 1e-12);
    expect_close(std::string("rnnext::lstm_layer c_n") + (reverse ? " (reverse)" : ""), cT, c, 1e-12);
    // Masked mode with every length T (and one beyond, clamped) is the dense layer.
    at::Tensor lengths = at::full({B}, T, at::TensorOptions().dtype(at::kLong));
    lengths[0] = T + 5;
    auto [ym, hm, cm, gm, cellsm] = layer.call(x, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt,
                                               std::nullopt, false, reverse, false, lengths);
    expect_close(std::string("rnnext::lstm_layer masked output") + (reverse ? " (reverse)" : ""), ym, y, 1e-12);
    expect_close(std::string("rnnext::lstm_layer masked h_n") + (reverse ? " (reverse)" : ""), hm, hT, 1e-12);
  }

  // A GRU layer (rnnext::rnn_layer, dense, forward direction) against GRU steps written in ATen.
  {
    const auto g_ih = at::randn({3 * H, I}, opts), g_hh = at::randn({3 * H, H}, opts);
    const auto gb_ih = at::randn({3 * H}, opts), gb_hh = at::randn({3 * H}, opts);
    auto rnn_layer = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnext::rnn_layer", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, bool, bool,
                             c10::string_view, const std::optional<at::Tensor>&)>();
    const auto [y, hT, saved] = rnn_layer.call(x, h0, g_ih, g_hh, gb_ih, gb_hh, std::nullopt, std::nullopt, false,
                                               false, false, "gru", std::nullopt);
    at::Tensor h = h0;
    for (int64_t t = 0; t < T; ++t) {
      const auto gx = (at::matmul(x[t], g_ih.t()) + gb_ih).chunk(3, 1);
      const auto gh = (at::matmul(h, g_hh.t()) + gb_hh).chunk(3, 1);
      const auto r = at::sigmoid(gx[0] + gh[0]), z = at::sigmoid(gx[1] + gh[1]);
      const auto n = at::tanh(gx[2] + r * gh[2]);
      h = (1 - z) * n + z * h;
      expect_close("rnnext::rnn_layer (gru) output, step " + std::to_string(t), y[t], h, 1e-12);
    }
    expect_close("rnnext::rnn_layer (gru) h_n", hT, h, 1e-12);
  }

  // A bad argument is an exception with a message, not a crash.
  bool threw = false;
  try {
    layer.call(x, h0, c0, w_ih, at::randn({4 * H, H + 1}, opts), b_ih, b_hh, std::nullopt, std::nullopt,
               std::nullopt, false, false, false, std::nullopt);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("expected w_hh of shape") != std::string::npos;
  }
  std::printf("%-44s %s\n", "bad w_hh shape raises a clear error", threw ? "ok" : "FAILED");
  if (!threw) ++failures;

  std::printf("%s\n", failures == 0 ? "all rnnext C++ checks passed" : "rnnext C++ checks FAILED");
  return failures == 0 ? 0 : 1;
}
