"""Checkpoints of the 2017 PyTorch SNLI example's SPINN: rnnext.nn.SPINN.from_snli_example and SNLIExampleSPINN
against a re-creation of the example (tests/snli_example_oracle.py), with and without a tracker and transition
prediction, outputs and gradients."""

import random

import pytest
import torch

import rnnext
from rnnext.nn import SNLIExampleSPINN

from snli_example_oracle import ExampleSPINN, example_inputs

H, TT = 6, 5


def random_parse(n, rng):
    """Codes of a random binary parse of n tokens (3 shift, 2 reduce)."""
    codes, depth, shifted = [], 0, 0
    while shifted < n or depth > 1:
        if shifted < n and (depth < 2 or rng.random() < 0.5):
            codes.append(3)
            shifted += 1
            depth += 1
        else:
            codes.append(2)
            depth -= 1
    return codes


def batch(lengths, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    states = [torch.randn(n, 2 * H, generator=g, dtype=dtype) for n in lengths]
    pad = torch.randn(1, 2 * H, generator=g, dtype=dtype)  # the pad token's [h | c] (projected embedding)
    return example_inputs(states, [random_parse(n, rng) for n in lengths], pad)


def pair(tracker, predict, seed=0):
    torch.manual_seed(seed)
    oracle = ExampleSPINN(H, tracker, predict).double()
    ours = rnnext.nn.SPINN.from_snli_example(oracle.state_dict())
    return oracle, ours


@pytest.mark.parametrize("tracker", [None, TT])
@pytest.mark.parametrize("lengths", [[1], [4, 1, 7, 3], [5, 5, 2]])
def test_given_transitions_match_the_example(tracker, lengths):
    oracle, ours = pair(tracker, False)
    assert isinstance(ours, SNLIExampleSPINN) and ours.tracker_size == tracker and not ours.predict
    buffers, transitions = batch(lengths, seed=len(lengths))
    b1, b2 = buffers.clone().requires_grad_(), buffers.clone().requires_grad_()
    want, got = oracle(b1, transitions), ours(b2, transitions)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(want)
    (want * w).sum().backward()
    (got * w).sum().backward()
    torch.testing.assert_close(b2.grad, b1.grad, rtol=1e-12, atol=1e-12)
    theirs = dict(oracle.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-12, atol=1e-12, msg=name)


def test_null_is_the_pad_token_not_zeros():
    """The example's differences matter: rnnext's own SPINN on the same tokens (forward order, rnnext codes, zero
    nulls) differs from the example where the tracker reads nulls, and SNLIExampleSPINN does not."""
    oracle, ours = pair(TT, False, seed=1)
    buffers, transitions = batch([4, 2], seed=3)
    plain = rnnext.nn.SPINN(H, tracker_size=TT).double()
    plain.load_state_dict(ours.state_dict())
    codes = {3: rnnext.nn.SHIFT, 2: rnnext.nn.REDUCE, 1: rnnext.nn.PAD}
    tr = transitions.clone().apply_(lambda c: codes[c])
    fwd = torch.stack([buffers[:, b].flip(0) for b in range(2)], 1)  # tokens first, pads after
    with torch.no_grad():
        want = oracle(buffers, transitions)
        assert (plain(fwd, tr) - want).abs().max() > 1e-3
        torch.testing.assert_close(ours(buffers, transitions), want, rtol=1e-12, atol=1e-12)


def test_predict_follows_the_4_way_argmax_like_the_example():
    """With predict the example ignores the given transitions and follows its transition layer's argmax over
    the four torchtext codes (no-ops included). Over seeds: where the example's run completes, the numbers and
    gradients agree; where it fails (IndexError on an empty stack or buffer), SNLIExampleSPINN raises a
    ValueError naming the row and step."""
    ran = failed = reduced = 0
    for seed in range(130):  # random argmax policies seldom finish a parse with a REDUCE: many seeds, short rows
        oracle, ours = pair(TT, True, seed=seed)
        assert ours.predict and ours.tracker.transition.out_features == 4
        with torch.no_grad():  # a transition layer that reduces now and then
            for m in (oracle, ours):
                m.tracker.transition.bias.copy_(torch.tensor([-9.0, 0.5, 0.6, 0.6], dtype=torch.float64))
        buffers, transitions = batch([4] if seed < 100 else [3, 5, 2], seed=seed)
        b1, b2 = buffers.clone().requires_grad_(), buffers.clone().requires_grad_()
        try:
            want = oracle(b1, transitions if seed % 2 else None)
        except IndexError:
            failed += 1
            with pytest.raises(ValueError, match=r"row \d+, step \d+: .*IndexError"):
                ours(b2, transitions if seed % 2 else None)
            continue
        ran += 1
        got = ours(b2, transitions if seed % 2 else None)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(b2.grad, b1.grad, rtol=1e-12, atol=1e-12)
        g = oracle.reduce.left.weight.grad
        reduced += int(g is not None and bool(g.abs().sum() > 0))
        theirs = dict(oracle.named_parameters())
        for name, p in ours.named_parameters():
            if theirs[name].grad is None:
                assert p.grad is None or not p.grad.any(), name
            else:
                torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-12, atol=1e-12, msg=name)
    assert ran >= 5 and failed >= 1 and reduced >= 3, (ran, failed, reduced)


def test_from_snli_example_sources_and_errors():
    oracle, _ = pair(TT, True, seed=2)
    classifier_state = {"embed.weight": torch.zeros(3, 4), **{f"encoder.{k}": v for k, v in
                                                              oracle.state_dict().items()}}
    for source in (oracle, oracle.state_dict(), classifier_state):
        m = rnnext.nn.SPINN.from_snli_example(source)
        assert (m.hidden_size, m.tracker_size, m.predict) == (H, TT, True)
        assert m.reduce.left.weight.dtype == torch.float64
    assert rnnext.nn.SPINN.from_snli_example(oracle, dtype=torch.float32).reduce.left.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="reduce.left.weight"):
        rnnext.nn.SPINN.from_snli_example({"embed.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="predict needs a tracker"):
        SNLIExampleSPINN(H, None, predict=True)
    m = SNLIExampleSPINN(H, TT)
    with pytest.raises(ValueError, match="transitions=None needs predict"):
        m(torch.zeros(3, 1, 2 * H))
    with pytest.raises(ValueError, match="REDUCE with fewer than two stack entries"):
        SNLIExampleSPINN(H)(torch.zeros(2, 1, 2 * H), torch.tensor([[2], [2], [2]]))
