"""Drop-ins for ``torch.nn.utils.rnn``: the same signatures and results (torch's own ``PackedSequence``,
bit-identical data, ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices``), with packing and unpacking
done by one gather or scatter op each (``rnnext::packed_gather`` / ``rnnext::packed_scatter``) instead of a
sort-copy plus a pack copy. ``lengths`` may be a list, a CPU tensor, or a tensor on the input's device.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence
from torch.nn.utils.rnn import pad_sequence as _torch_pad_sequence
from torch.nn.utils.rnn import unpad_sequence as _torch_unpad_sequence

from .. import _ops

__all__ = [
    "PackedSequence",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "pack_sequence",
    "unpack_sequence",
    "pad_sequence",
    "unpad_sequence",
    "check_lengths",
    "batch_sizes_from_lengths",
]

_UNSORTED_MESSAGE = (
    "`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. You can pass "
    "`enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to sidestep this requirement if you do "
    "not need ONNX exportability."
)


def check_lengths(fn: str, lengths: Union[Tensor, Sequence[int]], batch: int, max_length: int) -> Tensor:
    """``lengths`` as a 1-D int64 CPU tensor, checked: one entry per sequence, each in [1, max_length]."""
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{fn}: expected integer lengths, got dtype {lengths.dtype}")
        lengths = lengths.detach().to("cpu", torch.int64)
    else:
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
    if lengths.dim() != 1:
        raise ValueError(f"{fn}: expected lengths to be 1-D (one length per sequence), got shape "
                         f"{tuple(lengths.shape)}")
    if lengths.numel() != batch:
        raise ValueError(f"{fn}: expected {batch} lengths (the batch size of the input), got {lengths.numel()}")
    if batch > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo <= 0:
            i = int(torch.nonzero(lengths <= 0)[0])
            raise ValueError(f"{fn}: every length must be at least 1, got lengths[{i}] = {int(lengths[i])}")
        if hi > max_length:
            i = int(torch.nonzero(lengths > max_length)[0])
            raise ValueError(f"{fn}: lengths[{i}] = {int(lengths[i])} is longer than the padded input "
                             f"({max_length} steps)")
    return lengths


def batch_sizes_from_lengths(sorted_lengths: Tensor) -> Tensor:
    """batch_sizes[t] = number of sequences longer than t, for lengths sorted in decreasing order."""
    if sorted_lengths.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    longest = int(sorted_lengths[0])
    counts = torch.bincount(sorted_lengths, minlength=longest + 1)
    return sorted_lengths.numel() - counts.cumsum(0)[:longest]


def _sort_lengths(fn: str, lengths: Tensor, enforce_sorted: bool) -> Tuple[Tensor, Optional[Tensor]]:
    if enforce_sorted:
        if lengths.numel() > 1 and bool((lengths[1:] > lengths[:-1]).any()):
            raise RuntimeError(_UNSORTED_MESSAGE)
        return lengths, None
    return torch.sort(lengths, descending=True)


def pack_padded_sequence(
    input: Tensor,
    lengths: Union[Tensor, List[int]],
    batch_first: bool = False,
    enforce_sorted: bool = True,
) -> PackedSequence:
    """Packs a padded batch of variable-length sequences; see ``torch.nn.utils.rnn.pack_padded_sequence``.

    ``input`` is ``(T, B, *)`` (``(B, T, *)`` with ``batch_first``) of any dtype; ``lengths`` a list or a tensor
    (on any device). Returns torch's ``PackedSequence`` with the same contents stock torch produces.
    """
    fn = "pack_padded_sequence"
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"{fn}: expected input of at least 2 dimensions "
                         f"({'batch, time' if batch_first else 'time, batch'}, *), got shape {tuple(input.shape)}")
    batch, steps = (input.size(0), input.size(1)) if batch_first else (input.size(1), input.size(0))
    if batch == 0:  # as stock: a PackedSequence of no sequences does not exist
        raise RuntimeError(f"{fn}: cannot pack empty tensors (the batch has no sequences; input shape "
                           f"{tuple(input.shape)})")
    lengths = check_lengths(fn, lengths, batch, steps)
    sorted_lengths, sorted_indices = _sort_lengths(fn, lengths, enforce_sorted)
    batch_sizes = batch_sizes_from_lengths(sorted_lengths)
    data = _ops.ops.packed_gather(input, batch_sizes, sorted_indices, batch_first, int(lengths.sum()))
    if sorted_indices is not None:
        sorted_indices = sorted_indices.to(input.device)
    return PackedSequence(data, batch_sizes, sorted_indices, None)


def _sorted_indices_of(sequence: PackedSequence) -> Optional[Tensor]:
    if sequence.sorted_indices is not None:
        return sequence.sorted_indices
    if sequence.unsorted_indices is not None:
        return torch.argsort(sequence.unsorted_indices)
    return None


def pad_packed_sequence(
    sequence: PackedSequence,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Pads a packed batch back; see ``torch.nn.utils.rnn.pad_packed_sequence``. Returns ``(padded, lengths)``
    with ``lengths`` a CPU int64 tensor in the original batch order."""
    fn = "pad_packed_sequence"
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"{fn}: expected a PackedSequence, got {type(sequence).__name__}")
    batch_sizes = sequence.batch_sizes
    max_seq_length = batch_sizes.size(0)
    if total_length is not None:
        if total_length < max_seq_length:
            raise ValueError(
                "Expected total_length to be at least the length of the longest sequence in input, but got "
                f"total_length={total_length} and max sequence length being {max_seq_length}"
            )
    else:
        total_length = max_seq_length
    batch = int(batch_sizes[0]) if max_seq_length > 0 else 0
    sorted_indices = _sorted_indices_of(sequence)
    si_cpu = sorted_indices.cpu() if sorted_indices is not None else None
    padded = _ops.ops.packed_scatter(sequence.data, batch_sizes, si_cpu, batch_first, padding_value, batch,
                                     total_length)
    lengths = (batch_sizes.unsqueeze(1) > torch.arange(batch).unsqueeze(0)).sum(0)
    if sequence.unsorted_indices is not None:
        lengths = lengths[sequence.unsorted_indices.cpu()]
    elif si_cpu is not None:
        lengths = lengths[torch.argsort(si_cpu)]
    return padded, lengths


def pack_sequence(sequences: Sequence[Tensor], enforce_sorted: bool = True) -> PackedSequence:
    """Packs a list of variable-length tensors; see ``torch.nn.utils.rnn.pack_sequence``."""
    lengths = torch.as_tensor([v.size(0) for v in sequences])
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: PackedSequence) -> List[Tensor]:
    """Unpacks a PackedSequence into a list of tensors; see ``torch.nn.utils.rnn.unpack_sequence``."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)


def pad_sequence(
    sequences: Union[Tensor, List[Tensor]],
    batch_first: bool = False,
    padding_value: float = 0.0,
    padding_side: str = "right",
) -> Tensor:
    """Pads a list of tensors; the same function as ``torch.nn.utils.rnn.pad_sequence`` (already one pass)."""
    return _torch_pad_sequence(sequences, batch_first=batch_first, padding_value=padding_value,
                               padding_side=padding_side)


def unpad_sequence(padded_sequences: Tensor, lengths: Tensor, batch_first: bool = False) -> List[Tensor]:
    """Splits a padded tensor into a list of tensors; the same as ``torch.nn.utils.rnn.unpad_sequence``."""
    return _torch_unpad_sequence(padded_sequences, lengths, batch_first=batch_first)
