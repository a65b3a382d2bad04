"""rnnext.utils.rnn and the packed_gather / packed_scatter ops against torch.nn.utils.rnn (the oracle)."""

import itertools
import zlib

import pytest
import torch
import torch.nn.utils.rnn as stock
from torch.nn.utils.rnn import PackedSequence

from rnnext.utils import rnn as ours

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
          torch.bool]


def random_batch(dtype, T, B, feat, batch_first, g):
    shape = (B, T, *feat) if batch_first else (T, B, *feat)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def lengths_for(kind, T, B, g, sorted_):
    if kind == "ones":
        lengths = torch.ones(B, dtype=torch.int64)
    elif kind == "equal":
        lengths = torch.full((B,), T, dtype=torch.int64)
    else:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[int(torch.randint(0, B, (1,), generator=g))] = T
    if sorted_:
        lengths = lengths.sort(descending=True).values
    return lengths


def assert_same_packed(a: PackedSequence, b: PackedSequence):
    assert a.data.dtype == b.data.dtype and torch.equal(a.data, b.data)
    assert torch.equal(a.batch_sizes, b.batch_sizes) and a.batch_sizes.dtype == b.batch_sizes.dtype
    for x, y in ((a.sorted_indices, b.sorted_indices), (a.unsorted_indices, b.unsorted_indices)):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


CASES = list(itertools.product(DTYPES, [False, True], [True, False], ["random", "ones", "equal"],
                               [(), (3,), (2, 3)]))


@pytest.mark.parametrize("dtype,batch_first,enforce_sorted,kind,feat", CASES)
def test_pack_and_unpack_match_torch(dtype, batch_first, enforce_sorted, kind, feat):
    g = torch.Generator().manual_seed(zlib.crc32(repr((dtype, batch_first, enforce_sorted, kind, feat)).encode()))
    T, B = 6, 5
    x = random_batch(dtype, T, B, feat, batch_first, g)
    lengths = lengths_for(kind, T, B, g, enforce_sorted)
    for lens in (lengths, lengths.tolist()):
        a = stock.pack_padded_sequence(x, lens, batch_first=batch_first, enforce_sorted=enforce_sorted)
        b = ours.pack_padded_sequence(x, lens, batch_first=batch_first, enforce_sorted=enforce_sorted)
        assert_same_packed(a, b)
    for total in (None, T + 2):
        pad = 7 if not dtype.is_floating_point else -1.5
        if dtype == torch.bool:
            pad = True
        pa, la = stock.pad_packed_sequence(a, batch_first=batch_first, padding_value=pad, total_length=total)
        pb, lb = ours.pad_packed_sequence(b, batch_first=batch_first, padding_value=pad, total_length=total)
        assert pa.dtype == pb.dtype and torch.equal(pa, pb)
        assert torch.equal(la, lb) and lb.dtype == torch.int64 and lb.device.type == "cpu"
    # Stock unpacks rnnext's PackedSequence and vice versa.
    assert torch.equal(stock.pad_packed_sequence(b, batch_first=batch_first)[0],
                       ours.pad_packed_sequence(a, batch_first=batch_first)[0])


@pytest.mark.parametrize("B", [1, 4])
def test_sequence_helpers_match_torch(B):
    g = torch.Generator().manual_seed(B)
    seqs = [torch.randn(int(n), 3, generator=g) for n in torch.randint(1, 7, (B,), generator=g)]
    for enforce_sorted in (False,) + ((True,) if B == 1 else ()):
        a = stock.pack_sequence(seqs, enforce_sorted=enforce_sorted)
        b = ours.pack_sequence(seqs, enforce_sorted=enforce_sorted)
        assert_same_packed(a, b)
        for u, v in zip(stock.unpack_sequence(a), ours.unpack_sequence(b)):
            assert torch.equal(u, v)
    sorted_seqs = sorted(seqs, key=len, reverse=True)
    assert_same_packed(stock.pack_sequence(sorted_seqs), ours.pack_sequence(sorted_seqs))
    for bf in (False, True):
        p1, p2 = stock.pad_sequence(seqs, batch_first=bf), ours.pad_sequence(seqs, batch_first=bf)
        assert torch.equal(p1, p2)
        lengths = torch.tensor([len(s) for s in seqs])
        for u, v in zip(stock.unpad_sequence(p1, lengths, batch_first=bf), ours.unpad_sequence(p2, lengths, bf)):
            assert torch.equal(u, v)


@pytest.mark.parametrize("batch_first,enforce_sorted", list(itertools.product([False, True], [False, True])))
def test_gradients_through_pack_and_unpack_match_torch(batch_first, enforce_sorted):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((4, 6, 3) if batch_first else (6, 4, 3), dtype=torch.float64, generator=g)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([4, 1, 6, 4])
    grads = []
    for lib in (stock, ours):
        xi = x.clone().requires_grad_()
        p = lib.pack_padded_sequence(xi, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        data = p.data * torch.linspace(1, 2, p.data.numel(), dtype=x.dtype).view_as(p.data)
        p2 = PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        padded, _ = lib.pad_packed_sequence(p2, batch_first=batch_first, total_length=8)
        (padded * torch.arange(padded.numel(), dtype=x.dtype).view_as(padded)).sum().backward()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])


def _op_args(batch_first, sorted_):
    g = torch.Generator().manual_seed(1)
    bs = torch.tensor([3, 3, 2, 1])
    si = torch.tensor([2, 0, 1]) if sorted_ else None
    x = torch.randn((3, 5, 2) if batch_first else (5, 3, 2), dtype=torch.float64, generator=g)
    return x, bs, si


@pytest.mark.parametrize("batch_first,sorted_", list(itertools.product([False, True], [False, True])))
def test_gather_scatter_gradcheck_and_opcheck(batch_first, sorted_):
    x, bs, si = _op_args(batch_first, sorted_)
    gather = lambda t: torch.ops.rnnext.packed_gather(t, bs, si, batch_first, 9)
    scatter = lambda d: torch.ops.rnnext.packed_scatter(d, bs, si, batch_first, -2.0, 3, 6)
    assert torch.autograd.gradcheck(gather, (x.clone().requires_grad_(),))
    data = torch.randn(9, 2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(scatter, (data,))
    assert torch.autograd.gradgradcheck(scatter, (data,))
    torch.library.opcheck(torch.ops.rnnext.packed_gather.default, (x.requires_grad_(), bs, si, batch_first, 9))
    torch.library.opcheck(torch.ops.rnnext.packed_scatter.default, (data, bs, si, batch_first, -2.0, 3, 6))
    tokens = torch.randint(0, 50, x.shape[:2])
    torch.library.opcheck(torch.ops.rnnext.packed_gather.default, (tokens, bs, si, batch_first, 9))


def test_lengths_errors_name_the_problem():
    x = torch.randn(5, 3, 2)
    with pytest.raises(ValueError, match=r"at least 1, got lengths\[1\] = 0"):
        ours.pack_padded_sequence(x, [3, 0, 2], enforce_sorted=False)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 6 is longer than the padded input \(5 steps\)"):
        ours.pack_padded_sequence(x, [6, 2, 1])
    with pytest.raises(ValueError, match="1-D"):
        ours.pack_padded_sequence(x, [[3], [2], [1]])
    with pytest.raises(ValueError, match="expected 3 lengths"):
        ours.pack_padded_sequence(x, [3, 2])
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order when `enforce_sorted` is True"):
        ours.pack_padded_sequence(x, [2, 3, 1])
    with pytest.raises(TypeError, match="integer lengths"):
        ours.pack_padded_sequence(x, torch.tensor([3.0, 2.0, 1.0]))
    p = ours.pack_padded_sequence(x, [3, 2, 1])
    with pytest.raises(ValueError, match="total_length to be at least the length of the longest"):
        ours.pad_packed_sequence(p, total_length=2)


def test_op_errors_are_clear():
    x = torch.randn(5, 3, 2)
    gather = torch.ops.rnnext.packed_gather
    with pytest.raises(RuntimeError, match="permutation"):
        gather(x, torch.tensor([3, 2]), torch.tensor([0, 0, 1]), False, 5)
    with pytest.raises(RuntimeError, match="size 3"):
        gather(x, torch.tensor([3, 2]), torch.tensor([0, 1]), False, 5)
    with pytest.raises(RuntimeError, match="sum to the number of packed rows"):
        gather(x, torch.tensor([3, 2]), None, False, 6)
    with pytest.raises(RuntimeError, match="longer than the padded sequence"):
        gather(x, torch.tensor([3, 3, 3, 3, 3, 3]), None, False, 18)
    with pytest.raises(RuntimeError, match=r"batch_sizes\[0\] to equal"):
        gather(x, torch.tensor([2, 2]), None, False, 4)
    with pytest.raises(RuntimeError, match="total_length"):
        torch.ops.rnnext.packed_scatter(torch.randn(5, 2), torch.tensor([3, 2]), None, False, 0.0, 3, 1)


@pytest.mark.parametrize("batch_first", [False, True])
def test_pack_empty_batch_raises_as_stock(batch_first):
    x = torch.zeros(0, 5, 3) if batch_first else torch.zeros(5, 0, 3)
    lengths = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="Cannot pack empty tensors"):
        torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first)
    with pytest.raises(RuntimeError, match="cannot pack empty tensors"):
        ours.pack_padded_sequence(x, lengths, batch_first=batch_first)
