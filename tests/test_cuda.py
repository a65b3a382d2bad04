"""Every op and module on CUDA against the CPU result (float64 tight, float32 close, half types loose),
gradients included. Skipped as a whole where no GPU is present (the CUDA build itself is checked by CI:
every op has a CUDA kernel registered)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnext
from rnnext.models import CharGenerator, SPINNClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
OPS = ["lstm_cell", "lstm_cell_backward", "lstm_layer", "lstm_layer_backward", "packed_gather", "packed_scatter",
       "treelstm_cell", "treelstm_cell_backward", "spinn_encode", "spinn_encode_backward", "thin_stack_plan",
       "lstm_generate", "rnn_layer", "rnn_layer_backward", "rnn_cell", "rnn_cell_backward",
       "rnn_generate"]


def close(a, b, dtype, what=""):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g}"


def both(module_cpu, dtype):
    """(CPU reference, CUDA copy) of a module in `dtype`. For the half types the reference is the float64 module
    holding the same rounded weights (the CPU has no float16 kernels; float64 is the exact answer either way)."""
    import copy

    mc = module_cpu.to(dtype)
    gpu = copy.deepcopy(mc).cuda()
    return (mc.double() if dtype in (torch.float16, torch.bfloat16) else mc), gpu


def run_and_grads(module, inputs, loss_fn, params=None):
    """Output and [input grads..., parameter grads...] of one forward/backward; `params` for a plain callable."""
    inputs = [x.clone().requires_grad_() if x.is_floating_point() else x for x in inputs]
    out = module(*inputs)
    loss_fn(out).backward()
    params = list(module.parameters()) if params is None else list(params)
    grads = [x.grad for x in inputs if x.is_floating_point()] + [p.grad for p in params]
    return out, grads


def test_every_op_has_a_cuda_kernel():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rnnext::{op}", "CUDA"), op


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["dense", "packed", "lengths", "masked", "masked_proj"])
def test_lstm_cuda_matches_cpu(dtype, kind):
    # lengths: host lengths (the sorted schedule, uploaded once); masked: lengths on the GPU (masked mode, read on
    # the device), against the CPU's sorted schedule.
    torch.manual_seed(0)
    proj = 3 if kind in ("dense", "masked_proj") else 0
    cpu, gpu = both(rnnext.nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=proj), dtype)
    x = torch.randn(7, 4, 5, dtype=dtype)
    lengths = torch.tensor([7, 3, 5, 1])
    results = []
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        xi = x.to(dev, next(m.parameters()).dtype).clone().requires_grad_()  # a new leaf per side
        if kind == "packed":
            y, (h, c) = m(pack_padded_sequence(xi, lengths, enforce_sorted=False))
            y = y.data
        elif kind == "lengths":
            y, (h, c) = m(xi, lengths=lengths.tolist())
        elif kind.startswith("masked"):
            y, (h, c) = m(xi, lengths=lengths.to(dev))
        else:
            y, (h, c) = m(xi)
        (y.double().sum() + h.double().square().sum() + c.double().sum()).backward()  # loss in float64 on both sides
        results.append([y, h, c, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(results[1], results[0]):
        close(a, b, dtype if dtype != torch.float64 else torch.float64)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["dense", "padded", "masked"])
def test_rnn_layer_cuda_matches_cpu(cell, dtype, layout):
    torch.manual_seed(0)
    T, B, I, H = 6, 4, 3, 5
    G = (3 if cell == "gru" else 1) * H
    base = [torch.randn(T, B, I), torch.randn(B, H), torch.randn(G, I) * 0.5, torch.randn(G, H) * 0.5,
            torch.randn(G), torch.randn(G)]
    bs, si = (torch.tensor([4, 3, 3, 2, 1]), torch.tensor([2, 0, 3, 1])) if layout == "padded" else (None, None)
    lengths = torch.tensor([6, 0, 3, 9]) if layout == "masked" else None  # masked mode: lengths on the device
    results = []
    for dev in ("cpu", "cuda"):
        args = [t.to(dev, dtype if dev == "cuda" or dtype == torch.float64 else torch.float32).clone().requires_grad_()
                for t in base]
        lens = lengths.to(dev) if lengths is not None else None
        out, hy, _ = torch.ops.rnnext.rnn_layer(*args, bs, si, False, True, True, cell, lens)
        (out.double().sin().sum() + hy.double().square().sum()).backward()
        results.append([out, hy] + [a.grad for a in args])
    for a, b in zip(results[1], results[0]):
        close(a, b, dtype)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_rnn_cell_cuda_matches_cpu(cell, dtype):
    torch.manual_seed(0)
    B, I, H = 5, 3, 6
    G = (3 if cell == "gru" else 1) * H
    base = [torch.randn(B, I), torch.randn(B, H), torch.randn(G, I) * 0.5, torch.randn(G, H) * 0.5, torch.randn(G),
            torch.randn(G)]
    results = []
    for dev in ("cpu", "cuda"):
        args = [t.to(dev, dtype if dev == "cuda" or dtype == torch.float64 else torch.float32).clone().requires_grad_()
                for t in base]
        hy, _ = torch.ops.rnnext.rnn_cell(*args, cell)
        hy.double().square().sum().backward()
        results.append([hy] + [a.grad for a in args])
    for a, b in zip(results[1], results[0]):
        close(a, b, dtype)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_rnn_generation_cuda_matches_cpu(cell):
    from rnnext.models import CharGenerator

    torch.manual_seed(0)
    cpu = CharGenerator(11, 5, 12, 2, cell=cell).double().eval()
    gpu = CharGenerator(11, 5, 12, 2, cell=cell).double().eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    prime = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(gpu.generate(prime.cuda(), 20, temperature=0.0).cpu(), cpu.generate(prime, 20, temperature=0.0))


def test_lstm_cell_and_treelstm_cell_cuda():
    torch.manual_seed(0)
    cpu, gpu = both(rnnext.nn.LSTMCell(4, 6), torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    a = run_and_grads(cpu, [x], lambda o: o[0].sum() + o[1].square().sum())
    b = run_and_grads(gpu, [x.cuda()], lambda o: o[0].sum() + o[1].square().sum())
    for u, v in zip(list(b[0]) + b[1], list(a[0]) + a[1]):
        close(u, v, torch.float64)
    pre, cl, cr = (torch.randn(5, 30, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64),
                   torch.randn(5, 6, dtype=torch.float64))
    for u, v in zip(torch.ops.rnnext.treelstm_cell(pre.cuda(), cl.cuda(), cr.cuda()),
                    torch.ops.rnnext.treelstm_cell(pre, cl, cr)):
        close(u, v, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64])
def test_packing_cuda(dtype):
    from rnnext.utils import rnn as R

    x = (torch.randn(6, 4, 3) * 10).to(dtype)
    p_cpu = R.pack_padded_sequence(x, [6, 2, 4, 1], enforce_sorted=False)
    p_gpu = R.pack_padded_sequence(x.cuda(), torch.tensor([6, 2, 4, 1]).cuda(), enforce_sorted=False)
    assert torch.equal(p_gpu.data.cpu(), p_cpu.data)
    assert torch.equal(R.pad_packed_sequence(p_gpu, padding_value=-1)[0].cpu(), R.pad_packed_sequence(p_cpu, padding_value=-1)[0])


@pytest.mark.parametrize("tracker", [None, 4])
def test_spinn_cuda_matches_cpu(tracker):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from spinn_oracle import random_transitions

    torch.manual_seed(0)
    cpu, gpu = both(rnnext.nn.SPINN(6, tracker_size=tracker), torch.float64)
    g = torch.Generator().manual_seed(0)
    tr = random_transitions([5, 3, 1, 4], g)
    buf = torch.randn(5, 4, 12, dtype=torch.float64, generator=g)
    a = run_and_grads(lambda b: cpu(b, tr), [buf], lambda o: o.sum(), cpu.parameters())
    b = run_and_grads(lambda b: gpu(b, tr), [buf.cuda()], lambda o: o.sum(), gpu.parameters())
    close(b[0], a[0], torch.float64)
    close(b[1][0], a[1][0], torch.float64)
    for p, q in zip(gpu.parameters(), cpu.parameters()):
        close(p.grad, q.grad, torch.float64)


def test_generation_cuda_greedy_matches_cpu():
    torch.manual_seed(0)
    model = CharGenerator(11, 6, 20, 2).double().eval()
    prime = torch.randint(0, 11, (3, 4))
    cpu_out = model.generate(prime, 20, temperature=0.0)
    gpu_out = model.cuda().generate(prime.cuda(), 20, temperature=0.0)
    assert torch.equal(gpu_out.cpu(), cpu_out)


def test_padded_lstm_path_does_not_sync():
    torch.manual_seed(0)
    m = rnnext.nn.LSTM(5, 8, num_layers=2, bidirectional=True, batch_first=True).cuda()
    x = torch.randn(4, 7, 5, device="cuda", requires_grad=True)
    host = [7, 3, 5, 1]  # host lengths: the op uploads its plan once, without synchronizing
    device = torch.tensor(host, device="cuda")  # device lengths: masked mode, never read by the host
    for lengths in (host, device):
        m(x, lengths=lengths)[0].sum().backward()  # warm-up (lazy initialisations may synchronize)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for lengths in (host, device):
            y, (h, c) = m(x, lengths=lengths, padding_value=-1.0)
            (y.sum() + h.sum() + c.sum()).backward()
        m(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_spinn_parse_loop_does_not_sync():
    torch.manual_seed(0)
    model = rnnext.nn.SPINN(6, tracker_size=4, predict_transitions=True).cuda().train()
    buffers = torch.randn(5, 4, 12, device="cuda", requires_grad=True)
    lengths = [5, 3, 1, 4]  # host lengths
    parse = model(buffers, None, lengths=lengths)  # warm-up
    (parse.h.sum() + parse.log_probs.sum()).backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        parse = model(buffers, None, lengths=lengths)
        (parse.h.sum() + parse.log_probs.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tr = parse.transitions.cpu()
    assert ((tr == 0).sum(0) == torch.tensor(lengths)).all()


def test_classifier_on_cuda_trains():
    torch.manual_seed(0)
    model = SPINNClassifier(16, 8, 6, 3).cuda()
    from rnnext.data import listops as L

    batch = L.collate(L.generate_listops(8, seed=0, max_length=20))
    logits = model(batch.tokens.cuda(), batch.transitions, batch.lengths)
    torch.nn.functional.cross_entropy(logits, (batch.labels % 3).cuda()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bench_quick_on_cuda(tmp_path):
    from rnnext.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--device", "cuda", "--rounds", "2", "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    assert "GPU" in res["machine"]
    for suite in res["suites"].values():
        assert suite["config"]["device"].startswith("cuda")
        assert all(r["speedup"] > 0 for r in suite["rows"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stock_cls", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN, torch.nn.LSTMCell, torch.nn.GRUCell,
                                       torch.nn.RNNCell])
def test_autocast_on_cuda_matches_stock(stock_cls, dtype):
    """Under torch.autocast("cuda", dtype) a float32 module returns stock's dtype (on CUDA stock lowers every layer,
    through cuDNN's RNN, and every cell), with stock's values at that precision; the parameters' gradients stay
    float32. Stock's layers run in float16 even in a bfloat16 region (cuDNN's autocast wrapper casts to half)."""
    torch.manual_seed(0)
    stock = stock_cls(4, 6).cuda()
    ours = getattr(rnnext.nn, stock_cls.__name__)(4, 6).cuda()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(3, 4, device="cuda") if "Cell" in stock_cls.__name__ else torch.randn(5, 3, 4, device="cuda")
    results = []
    for m in (stock, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            out = m(xi)
        first = out[0] if isinstance(out, tuple) else out
        first.double().sum().backward()
        assert xi.grad.dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 for p in m.parameters())
        results.append(first)
    a, b = results
    expected = dtype if "Cell" in stock_cls.__name__ else torch.float16
    assert a.dtype == b.dtype == expected, f"stock returns {a.dtype}, rnnext {b.dtype}"
    torch.testing.assert_close(b.double(), a.double(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tree_models_and_generation_in_half_types(dtype):
    """SPINN (with a tracker), the TreeLSTM cell and sampling in float16/bfloat16 on CUDA, against the float64 CPU
    module holding the same rounded weights."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from spinn_oracle import random_transitions

    torch.manual_seed(0)
    ref, gpu = both(rnnext.nn.SPINN(6, tracker_size=4), dtype)
    g = torch.Generator().manual_seed(0)
    tr = random_transitions([5, 3, 1, 4], g)
    buf = torch.randn(5, 4, 12, generator=g).to(dtype)
    a = run_and_grads(lambda b: ref(b, tr), [buf.double()], lambda o: o.double().sum(), ref.parameters())
    b = run_and_grads(lambda b: gpu(b, tr), [buf.cuda()], lambda o: o.double().sum(), gpu.parameters())
    assert b[0].dtype == dtype and all(t.dtype == dtype for t in b[1])
    close(b[0], a[0], dtype, "SPINN output")
    for i, (u, v) in enumerate(zip(b[1], a[1])):
        close(u, v, dtype, f"SPINN gradient {i}")
    pre, cl, cr = (torch.randn(5, 30).to(dtype), torch.randn(5, 6).to(dtype), torch.randn(5, 6).to(dtype))
    outs = torch.ops.rnnext.treelstm_cell(pre.cuda(), cl.cuda(), cr.cuda())
    assert outs[0].dtype == outs[1].dtype == dtype  # h, c (the workspace may be wider)
    for u, v in zip(outs, torch.ops.rnnext.treelstm_cell(pre.double(), cl.double(), cr.double())):
        close(u, v, dtype, "treelstm_cell")
    model = CharGenerator(11, 6, 20, 2).to(dtype).eval().cuda()
    prime = torch.randint(0, 11, (3, 4), device="cuda")
    out = model.generate(prime, 20, temperature=1.0, generator=torch.Generator().manual_seed(3))
    again = model.generate(prime, 20, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert out.numel() == 3 * 20 and int(out.min()) >= 0 and int(out.max()) < 11
    assert torch.equal(out, again)
