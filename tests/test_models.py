"""RNNClassifier, CharVocab / CharGenerator and the fused generation op."""

import math

import pytest
import torch

import rnnext
from rnnext.models import CharGenerator, CharVocab, RNNClassifier


def padded_batch(B, T, vocab, g):
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    tokens = torch.randint(1, vocab, (B, T), generator=g)
    tokens[torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return tokens, lengths


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_classifier_ignores_padding(cell, pooling, layers, bidir):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = RNNClassifier(20, 8, 6, 4, cell=cell, num_layers=layers, bidirectional=bidir, pooling=pooling).double()
    model.eval()
    tokens, lengths = padded_batch(5, 7, 20, g)
    logits = model(tokens, lengths)
    assert logits.shape == (5, 4)
    # More padding changes nothing.
    longer = torch.cat([tokens, torch.zeros(5, 4, dtype=torch.int64)], 1)
    assert torch.allclose(model(longer, lengths), logits, atol=1e-12)
    # Nor does the rest of the batch: each example alone gives the same logits.
    for b in range(5):
        alone = model(tokens[b:b + 1, : int(lengths[b])], lengths[b:b + 1])
        assert torch.allclose(alone, logits[b:b + 1], atol=1e-12)


def test_classifier_trains_and_rejects_bad_arguments():
    g = torch.Generator().manual_seed(1)
    model = RNNClassifier(20, 8, 6, 3)
    tokens, lengths = padded_batch(4, 5, 20, g)
    torch.nn.functional.cross_entropy(model(tokens, lengths), torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p is not model.embedding.weight)
    with pytest.raises(ValueError, match="cell"):
        RNNClassifier(5, 2, 2, 2, cell="transformer")
    with pytest.raises(ValueError, match="pooling"):
        RNNClassifier(5, 2, 2, 2, pooling="sum")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(tokens[0], lengths[:1])


def test_char_vocab():
    v = CharVocab.from_text("hello world")
    assert len(v) == 9  # 8 distinct characters + unknown
    assert v.decode(v.encode("hello")) == "hello"
    assert v.encode("hz")[1] == 0 and v.unknown("hz!") == ["!", "z"]
    assert CharVocab.from_state_dict(v.state_dict()).itos == v.itos
    assert len(CharVocab.from_text("aaabbc", max_size=3)) == 3


GEN_CELLS = ["lstm", "gru", "rnn"]


def _model(seed=0, vocab=11, layers=2, cell="lstm"):
    torch.manual_seed(seed)
    return CharGenerator(vocab, embed_dim=6, hidden_size=20, num_layers=layers, cell=cell).eval()


def _python_loop(model, prime, steps, temperature=0.0):
    """Generation written as a Python loop over forward: the reference of the fused op."""
    logits, state = model(prime)
    logits = logits[:, -1]
    out = []
    for _ in range(steps):
        tok = logits.argmax(-1, keepdim=True)
        out.append(tok)
        logits, state = model(tok, state)
        logits = logits[:, -1]
    return torch.cat(out, 1)


@pytest.mark.parametrize("cell", GEN_CELLS)
@pytest.mark.parametrize("B,layers", [(1, 1), (3, 2), (40, 2)])
def test_greedy_generation_equals_python_loop(B, layers, cell):
    model = _model(layers=layers, cell=cell)
    prime = torch.randint(0, 11, (B, 4), generator=torch.Generator().manual_seed(B))
    with torch.no_grad():
        ref = _python_loop(model, prime, 30)
    out = model.generate(prime, 30, temperature=0.0)
    assert out.dtype == torch.int64 and out.shape == (B, 30)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("cell", GEN_CELLS)
def test_sampling_is_reproducible_and_follows_the_softmax(cell):
    model = _model(cell=cell)
    prime = torch.randint(0, 11, (1, 5), generator=torch.Generator().manual_seed(0))
    a = model.generate(prime, 50, temperature=0.9, generator=torch.Generator().manual_seed(7))
    b = model.generate(prime, 50, temperature=0.9, generator=torch.Generator().manual_seed(7))
    c = model.generate(prime, 50, temperature=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The first draw of a large batch of identical streams follows softmax(logits / T).
    n, T = 20000, 1.7
    with torch.no_grad():
        logits = model(prime)[0][0, -1]
    p = torch.softmax(logits.double() / T, 0)
    draws = model.generate(prime.expand(n, -1), 1, temperature=T, generator=torch.Generator().manual_seed(3))[:, 0]
    counts = torch.bincount(draws, minlength=11).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 35.0, chi2  # 10 degrees of freedom: p < 1e-4 to exceed by chance


@pytest.mark.parametrize("cell", GEN_CELLS)
def test_top_k_never_leaves_the_top_k(cell):
    model = _model(cell=cell)
    prime = torch.randint(0, 11, (500, 3), generator=torch.Generator().manual_seed(2))
    out = model.generate(prime, 8, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(4))
    # Recompute each step's logits along the generated path and check every draw is among its top 3.
    with torch.no_grad():
        logits, state = model(prime)
        logits = logits[:, -1]
        for s in range(8):
            top = logits.topk(3, -1).indices
            assert (top == out[:, s : s + 1]).any(1).all()
            logits, state = model(out[:, s : s + 1], state)
            logits = logits[:, -1]
    assert len(torch.unique(model.generate(prime[:1].expand(2000, -1), 1, temperature=5.0, top_k=1,
                                           generator=torch.Generator().manual_seed(0)))) == 1


def test_generation_op_opcheck_and_errors():
    model = _model()
    rnn = model.rnn
    names = rnn._all_weights
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 11, generator=g), torch.randn(2, 2, 20, generator=g), torch.randn(2, 2, 20, generator=g),
            model.embedding.weight.detach(), [getattr(rnn, n[0]).detach() for n in names],
            [getattr(rnn, n[1]).detach() for n in names], [getattr(rnn, n[2]).detach() for n in names],
            [None, None], model.head.weight.detach(), model.head.bias.detach(), torch.rand(6, 2, generator=g),
            0.8, 0)
    torch.library.opcheck(torch.ops.rnnext.lstm_generate.default, args)
    with pytest.raises(ValueError, match="steps"):
        model.generate(torch.zeros(1, 1, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 1, dtype=torch.int64), 3, temperature=-0.5)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 1, dtype=torch.int64), 3, top_k=0)
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.rnnext.lstm_generate(*args[:11], -1.0, 0)
    assert model.generate(torch.zeros(2, 1, dtype=torch.int64), 0).shape == (2, 0)


@pytest.mark.parametrize("cell,op_cell", [("gru", "gru"), ("rnn", "rnn_tanh")])
def test_rnn_generation_op_opcheck_and_errors(cell, op_cell):
    model = _model(cell=cell)
    rnn = model.rnn
    names = rnn._all_weights
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 11, generator=g), torch.randn(2, 2, 20, generator=g), model.embedding.weight.detach(),
            [getattr(rnn, n[0]).detach() for n in names], [getattr(rnn, n[1]).detach() for n in names],
            [getattr(rnn, n[2]).detach() for n in names], [None, None], model.head.weight.detach(),
            model.head.bias.detach(), torch.rand(6, 2, generator=g), 0.8, 2, op_cell]
    torch.library.opcheck(torch.ops.rnnext.rnn_generate.default, tuple(args))
    op = torch.ops.rnnext.rnn_generate
    with pytest.raises(RuntimeError, match='expected cell to be "gru", "rnn_tanh" or "rnn_relu", got "lstm"'):
        op(*args[:12], "lstm")
    with pytest.raises(RuntimeError, match="temperature"):
        op(*args[:10], -1.0, 0, op_cell)
    wrong = "rnn_tanh" if op_cell == "gru" else "gru"  # the other cell's weight shapes
    with pytest.raises(RuntimeError, match="layer 0: expected w_ih"):
        op(*args[:12], wrong)
    with pytest.raises(RuntimeError, match="expected a vocabulary of at least 1 entry"):
        op(args[0][:, :0], *args[1:])
    with pytest.raises(RuntimeError, match="expected uniforms as float32"):
        op(*args[:9], args[9].double(), *args[10:])
    with pytest.raises(ValueError, match="cell must be 'lstm', 'gru' or 'rnn'"):
        CharGenerator(11, cell="transformer")


@pytest.mark.parametrize("cell,cls", [("lstm", rnnext.nn.LSTM), ("gru", rnnext.nn.GRU), ("rnn", rnnext.nn.RNN)])
def test_classifier_uses_the_fused_modules(cell, cls):
    assert type(RNNClassifier(20, 8, 6, 4, cell=cell).rnn) is cls


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_generate_chunks_continue_the_sample(cell):
    """generate_chunks: one piece is generate's sample itself; greedy pieces of 7 continue it exactly (the state
    carried through each piece by the model's forward), the pieces at most chunk_size long; the model's mode is
    left as it was."""
    from rnnext.models import CharGenerator

    torch.manual_seed(0)
    model = CharGenerator(13, embed_dim=6, hidden_size=10, num_layers=2, cell=cell).double().train()
    prime = torch.tensor([[1, 4, 2], [3, 3, 5]])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = model.generate(prime, 30, temperature=0.8, generator=g1)
    (one,) = list(model.generate_chunks(prime, 30, temperature=0.8, generator=g2, chunk_size=30))
    assert torch.equal(one, whole)
    greedy = model.generate(prime, 30, temperature=0)
    pieces = list(model.generate_chunks(prime, 30, temperature=0, chunk_size=7))
    assert [p.shape[1] for p in pieces] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat(pieces, 1), greedy)
    assert model.training
    assert list(model.generate_chunks(prime, 0)) == []
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        next(model.generate_chunks(prime, 3, chunk_size=0))
