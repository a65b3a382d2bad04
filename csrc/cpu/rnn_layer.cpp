// CPU kernels of the GRU / vanilla-RNN layer: the engine of common/rnn_engine.h with the cells' fused pointwise
// steps (kernels/gru.h) run over the step's slots by ATen's threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/rnn_engine.h"
#include "kernels/gru.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;
using common::CellKind;

int64_t grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)); }

struct CpuPointwise {
  static void forward(CellKind cell, int64_t n, int64_t H, const Tensor& gx, const Tensor& gh, const Tensor& h,
                      const Tensor& h_out, const Tensor& saved) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "rnn_forward_step", [&] {
      const scalar_t* gxp = gx.const_data_ptr<scalar_t>();
      const scalar_t* ghp = gh.const_data_ptr<scalar_t>();
      scalar_t* hp = h.data_ptr<scalar_t>();
      scalar_t* hout = h_out.data_ptr<scalar_t>();
      scalar_t* sv = saved.defined() ? saved.data_ptr<scalar_t>() : nullptr;
      const bool relu = cell == CellKind::kRNNRelu;
      at::parallel_for(0, n, grain(H), [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          if (cell == CellKind::kGRU) {
            const scalar_t* x = gxp + j * 3 * H;
            const scalar_t* r = ghp + j * 3 * H;
            for (int64_t u = 0; u < H; ++u) {
              scalar_t rr, zz, nn, hn;
              kernels::gru_forward_elem(x[u], x[H + u], x[2 * H + u], r[u], r[H + u], r[2 * H + u], hp[j * H + u],
                                        rr, zz, nn, hn);
              hp[j * H + u] = hn;
              hout[j * H + u] = hn;
              if (sv != nullptr) {
                scalar_t* row = sv + j * 4 * H;
                row[u] = rr;
                row[H + u] = zz;
                row[2 * H + u] = nn;
                row[3 * H + u] = r[2 * H + u];
              }
            }
          } else {
            for (int64_t u = 0; u < H; ++u) {
              const scalar_t hn = kernels::rnn_activation(gxp[j * H + u] + ghp[j * H + u], relu);
              hp[j * H + u] = hn;
              hout[j * H + u] = hn;
            }
          }
        }
      });
    });
  }

  static void backward(CellKind cell, int64_t n, int64_t H, const Tensor& saved, const Tensor& h_new,
                       const Tensor& h_prev, const Tensor& dh, const Tensor& dgx, const Tensor& dgh,
                       const Tensor& dh_direct) {
    AT_DISPATCH_FLOATING_TYPES(dh.scalar_type(), "rnn_backward_step", [&] {
      const scalar_t* d = dh.const_data_ptr<scalar_t>();
      scalar_t* dx = dgx.data_ptr<scalar_t>();
      const bool relu = cell == CellKind::kRNNRelu;
      if (cell != CellKind::kGRU) {
        const scalar_t* hn = h_new.const_data_ptr<scalar_t>();
        at::parallel_for(0, n * H, grain(1), [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) dx[i] = kernels::rnn_activation_backward(hn[i], d[i], relu);
        });
        return;
      }
      const scalar_t* sv = saved.const_data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.const_data_ptr<scalar_t>();
      scalar_t* dr = dgh.data_ptr<scalar_t>();
      scalar_t* dd = dh_direct.data_ptr<scalar_t>();
      at::parallel_for(0, n, grain(H), [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const scalar_t* row = sv + j * 4 * H;
          scalar_t* gx = dx + j * 3 * H;
          scalar_t* gh = dr + j * 3 * H;
          for (int64_t u = 0; u < H; ++u) {
            scalar_t d_r, d_z, d_n, d_hn, d_h;
            kernels::gru_backward_elem(row[u], row[H + u], row[2 * H + u], row[3 * H + u], hp[j * H + u],
                                       d[j * H + u], d_r, d_z, d_n, d_hn, d_h);
            gx[u] = d_r;
            gx[H + u] = d_z;
            gx[2 * H + u] = d_n;
            gh[u] = d_r;
            gh[H + u] = d_z;
            gh[2 * H + u] = d_hn;
            dd[j * H + u] = d_h;
          }
        }
      });
    });
  }
};

Tensor upload_cpu(const std::vector<int64_t>& v) {
  Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

std::tuple<Tensor, Tensor, Tensor> rnn_layer_cpu(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                                 const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                 const std::optional<Tensor>& b_hh,
                                                 const std::optional<Tensor>& batch_sizes,
                                                 const std::optional<Tensor>& sorted_indices, bool batch_first,
                                                 bool reverse, bool train, c10::string_view cell) {
  return common::rnn_layer_forward<CpuPointwise>("rnnext::rnn_layer", input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                                                 sorted_indices, batch_first, reverse, train,
                                                 std::string_view(cell.data(), cell.size()), common::Backend::kCPU,
                                                 upload_cpu);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices,
    bool batch_first, bool reverse, const Tensor& output, const Tensor& saved, c10::string_view cell,
    bool has_bias) {
  return common::rnn_layer_backward<CpuPointwise>("rnnext::rnn_layer_backward", grad_output, grad_hy, input, hx, w_ih,
                                                  w_hh, batch_sizes, sorted_indices, batch_first, reverse, output,
                                                  saved, std::string_view(cell.data(), cell.size()), has_bias,
                                                  common::Backend::kCPU, upload_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("rnn_layer", &rnn_layer_cpu);
  m.impl("rnn_layer_backward", &rnn_layer_backward_cpu);
}

}  // namespace rnnext::cpu
