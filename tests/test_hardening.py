"""Hardening: checkpoints (round trips and a committed regression artifact), determinism, threads, long inputs
and flat memory, for every module and model (the cases of tests/model_cases.py)."""

import copy
import io
import os
import sys
import threading

import pytest
import torch

import rnnext

sys.path.insert(0, os.path.dirname(__file__))
from model_cases import CASES, build, forward_backward, tensors_of  # noqa: E402

# Regression artifacts, one per release that added cases: each must keep loading and reproducing; the newest
# covers every case.
ARTIFACTS = [os.path.join(os.path.dirname(__file__), "data", f"checkpoints_v{v}.pt") for v in ("0.1.0", "0.2.0")]
ARTIFACT = ARTIFACTS[-1]
NAMES = sorted(CASES)


def equal_lists(a, b, what):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and torch.equal(x, y), f"{what}: tensor {i} differs (max {(x - y).abs().max()})"


def eval_outputs(model, name, seed=1):
    model.eval()
    with torch.no_grad():
        return [t.clone() for t in tensors_of(model(*CASES[name].inputs(seed)))]


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_weights_only(name):
    model = build(name, seed=0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = build(name, seed=123)
    fresh.load_state_dict(state)
    equal_lists(eval_outputs(fresh, name), eval_outputs(model, name), name)


@pytest.mark.parametrize("name", NAMES)
def test_whole_module_pickle_round_trip(name):
    model = build(name, seed=0)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is type(model)
    equal_lists(eval_outputs(loaded, name), eval_outputs(model, name), name)


def make_artifact(path=ARTIFACT):
    """Writes the regression artifact: every case's state_dict and its eval-mode outputs on seed 1 (run
    `python tests/test_hardening.py` to regenerate it, only on purpose: the test compares against it)."""
    art = {"rnnext_version": str(rnnext.__version__), "torch_version": str(torch.__version__), "cases": {}}
    for name in NAMES:
        model = build(name, seed=0)
        art["cases"][name] = {"state_dict": model.state_dict(), "outputs": eval_outputs(model, name)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(art, path)


@pytest.mark.parametrize("path", ARTIFACTS, ids=[os.path.basename(p) for p in ARTIFACTS])
def test_committed_checkpoint_artifact_loads_and_reproduces(path):
    art = torch.load(path, weights_only=True)
    assert set(art["cases"]) <= set(NAMES), "a case was renamed: its old checkpoints must still load"
    if path == ARTIFACT:
        assert set(art["cases"]) == set(NAMES), "a case was added: regenerate the newest artifact on purpose"
    for name, entry in art["cases"].items():
        model = build(name, seed=99)
        model.load_state_dict(entry["state_dict"])  # strict: every key still exists with the same shape
        got = eval_outputs(model, name)
        assert len(got) == len(entry["outputs"]), name
        for g, e in zip(got, entry["outputs"]):
            # Written on an AVX-512 machine; other vector widths may differ in the last bits.
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_bit_identical_outputs_and_gradients(name):
    a = forward_backward(build(name).train(), name)
    b = forward_backward(build(name).train(), name)
    equal_lists(a[0], b[0], f"{name} outputs")
    equal_lists(a[1], b[1], f"{name} gradients")


@pytest.mark.parametrize("name", ["CharGenerator", "CharGenerator(gru)"])
def test_sampling_is_reproducible_with_a_seeded_generator(name):
    model = build(name).eval()
    prime = torch.randint(0, 12, (4, 3), generator=torch.Generator().manual_seed(0))
    runs = [model.generate(prime, 50, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = model.generate(prime, 50, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


# The rnnext ops give bit-identical results for any thread count (each output element is reduced in one fixed
# order). Modules that also run stock layers (nn.Linear heads and projections) inherit ATen's GEMMs, which may
# differ in the last bit between 1 and 2 threads (measured: nn.Linear(8, 40) on 5 rows, 1.2e-7).
PURE_OPS = {"LSTM", "LSTM(batch_first, proj)", "LSTMCell", "SPINN", "SPINN(no tracker)"}


@pytest.mark.parametrize("name", NAMES)
def test_thread_count_does_not_change_results(name):
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(forward_backward(build(name).train(), name))
    finally:
        torch.set_num_threads(before)
    if name in PURE_OPS:
        equal_lists(results[0][0], results[1][0], f"{name} outputs")
        equal_lists(results[0][1], results[1][1], f"{name} gradients")
    else:
        for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- threads

def test_concurrent_python_threads_match_serial_runs():
    """Every case forward + backward from 4 Python threads at once (eval mode: dropout would race on the
    global RNG, as it does for stock modules), each thread on its own model copy, against a serial run."""
    models = {name: build(name).eval() for name in NAMES}  # built here: parameter init uses the global RNG
    serial = {name: forward_backward(models[name], name, seed=3) for name in NAMES}
    copies = {(k, name): copy.deepcopy(models[name]) for k in range(4) for name in NAMES}
    errors, results = [], {}

    def worker(k):
        try:
            for name in NAMES[k % 2::2] + NAMES:
                results[(k, name)] = forward_backward(copies[(k, name)], name, seed=3)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    for (k, name), (outs, grads) in results.items():
        equal_lists(outs, serial[name][0], f"thread {k} {name} outputs")
        equal_lists(grads, serial[name][1], f"thread {k} {name} gradients")


# ---------------------------------------------------------------------------------------------- long inputs

def test_lstm_over_100k_steps():
    torch.manual_seed(0)
    m = rnnext.nn.LSTM(4, 8)
    x = torch.randn(100_000, 1, 4, requires_grad=True)
    y, (h, c) = m(x)
    y[-1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[-1].abs().sum() > 0
    # the state at the end equals a second run split in two halves, the first half's state carried over
    with torch.no_grad():
        y1, st = m(x[:50_000])
        y2, (h2, c2) = m(x[50_000:], st)
    assert torch.equal(h2, h) and torch.equal(c2, c)


def test_spinn_over_a_5000_token_tree():
    """A right-branching tree of 5,000 tokens: 4,999 nested compositions, each waiting for the one before."""
    H, N = 8, 5000
    transitions = torch.tensor([rnnext.SHIFT] * N + [rnnext.REDUCE] * (N - 1)).unsqueeze(1)
    torch.manual_seed(0)
    spinn = rnnext.nn.SPINN(H)
    buffers = (0.5 * torch.randn(N, 1, 2 * H)).requires_grad_()
    out = spinn(buffers, transitions)
    out.sum().backward()
    assert out.shape == (1, H) and torch.isfinite(buffers.grad).all()
    # oracle: compose from the right with the module's own TreeLSTMCell, one node at a time
    with torch.no_grad():
        tokens = buffers.detach()[:, 0]
        state = tokens[N - 1 : N]
        for i in range(N - 2, -1, -1):
            state = spinn.reduce(tokens[i : i + 1], state)
    torch.testing.assert_close(out.detach(), state[:, :H], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- memory

def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("name", ["RNNClassifier", "SPINNClassifier", "CharGenerator", "SPINN"])
def test_training_holds_flat_resident_memory(name):
    model = build(name).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    samples = []
    for step in range(1000):
        forward_backward(model, name, seed=step % 7, rng_seed=step)
        opt.step()
        if step in (199, 999):
            samples.append(_rss_mib())
    assert samples[1] - samples[0] < 8, f"resident memory grew by {samples[1] - samples[0]:.1f} MiB over 800 steps"


if __name__ == "__main__":
    make_artifact()
    print("wrote", ARTIFACT)


_LOAD_WHOLE_MODULES = r"""
import sys
import torch
import rnnext  # the only import: it must make every rnnext module and model loadable

def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return []

for path in sys.argv[1:]:
    model = torch.load(path + ".model.pt")  # the default: weights_only=True
    io = torch.load(path + ".io.pt")
    with torch.no_grad():
        got = flat(model(*io["inputs"]))
    assert len(got) == len(io["expected"]), path
    for a, b in zip(got, io["expected"]):
        assert torch.equal(a, b), path
print("ok", len(sys.argv) - 1)
"""


def test_whole_module_checkpoints_load_weights_only_in_a_fresh_process(tmp_path):
    """torch.save(model) / torch.load(path) (weights_only=True, torch's default) of every module and model, in
    a process that imports only torch and rnnext, gives the same outputs (word_language_model's save/reload)."""
    import subprocess

    assert torch.load.__kwdefaults__ is None or torch.load.__kwdefaults__.get("weights_only") in (None, True)
    paths = []
    for i, name in enumerate(NAMES):
        model = build(name).eval()
        inputs = CASES[name].inputs(1)
        with torch.no_grad():
            expected = [t.clone() for t in tensors_of(model(*inputs))]
        path = str(tmp_path / f"case{i}")
        torch.save(model, path + ".model.pt")
        torch.save({"inputs": inputs, "expected": expected}, path + ".io.pt")
        paths.append(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", _LOAD_WHOLE_MODULES, *paths], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"ok {len(paths)}"


def test_safe_globals_cover_every_public_class():
    import rnnext._safe_globals as sg

    allowed = set(torch.serialization.get_safe_globals())
    for mod in (rnnext.nn, rnnext.models):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type):
                assert obj in allowed, name
    assert all(c in allowed for c in sg.TORCH_NN_PARTS)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_torchscript_trace_works_and_script_says_what_to_use(name):
    """torch.jit.trace of a model holding an rnnext module works (the traced graph calls the rnnext op, gives the
    module's numbers on a new input of another length and batch, and passes trace's own check); torch.jit.script
    raises a message pointing to torch.compile / torch.export (stock's modules script; rnnext's cannot)."""
    import warnings

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(rnnext.nn, name)(3, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.rnn(x)
            return self.head(y[0] if isinstance(y, tuple) else y)

    torch.manual_seed(0)
    model = Model()
    cell = "Cell" in name
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,))
    x2 = torch.randn(4, 3) if cell else torch.randn(7, 3, 3)
    torch.testing.assert_close(traced(x2), model(x2))
    assert "rnnext::" in str(traced.inlined_graph)
    with pytest.raises(RuntimeError, match="torch.compile or torch.export"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(model)
