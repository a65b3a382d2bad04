"""Checkpoints of the 2017 PyTorch SNLI example's SPINN (``snli/spinn.py`` of pytorch/examples), run with that
example's conventions so that they give its numbers: :class:`SNLIExampleSPINN` and
:meth:`rnnext.nn.SPINN.from_snli_example`.

The example differs from :class:`rnnext.nn.SPINN` in four ways, all handled here:

- transition codes are torchtext's (``3`` shift, ``2`` reduce, ``1`` pad, ``0`` unknown: any code but 3 and 2
  is a no-op step), padded at the end;
- each buffer row is reversed (tokens pop from its end) and starts with the pad token (the example's
  ``ParsedTextField`` appends ``<pad>`` as end-of-sentence before reversing);
- the stack's two bottom entries are that first buffer row (the pad token's state) instead of zeros, and once
  the real tokens are shifted the tracker reads the next buffer entry (the end-of-sentence pad) as the buffer
  top;
- with ``predict`` the tracker's ``transition`` layer has four outputs (the torchtext codes) and the example
  follows its argmax at every step, ignoring the given transitions (it has no transition loss).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .tree import SPINN

__all__ = ["SNLIExampleSPINN", "EXAMPLE_SHIFT", "EXAMPLE_REDUCE", "EXAMPLE_PAD"]

EXAMPLE_SHIFT, EXAMPLE_REDUCE, EXAMPLE_PAD = 3, 2, 1  # torchtext's transition vocabulary


class SNLIExampleSPINN(SPINN):
    r"""The 2017 PyTorch SNLI example's ``SPINN`` (config ``d_hidden``, ``d_tracker``, ``predict``) on rnnext's
    TreeLSTM and tracker cells, with the example's conventions (module docstring): load the example's
    ``encoder`` state dict into it (``load_state_dict``: the parameter names are the example's, the 4-way
    ``tracker.transition`` included) or build it with :meth:`SPINN.from_snli_example`.

    ``forward(buffers, transitions=None)``: ``buffers`` (N, B, 2H) exactly as the example receives them
    (``[h | c]`` rows, each row reversed, the pad token first), ``transitions`` (S, B) in torchtext codes
    (``None`` only with ``predict``: then 2N - 3 steps, as the example). Returns the h of every row's final
    stack top (B, H), the example's output. It runs the example's step loop batched over rows (one tracker
    cell and one TreeLSTM call per step), not the fused ``rnnext::spinn_encode``, whose nulls are zeros; where
    the example would fail (a REDUCE or a tracker read with too few stack entries, a SHIFT from an exhausted
    buffer) it raises a ValueError naming the row and step. Train it as the example does or, for rnnext's fused
    op, move its weights into a :class:`SPINN` (``SPINN.load_state_dict`` takes them but for the 4-way layer)
    and feed rnnext's conventions.
    """

    def __init__(self, hidden_size: int, tracker_size: Optional[int] = None, predict: bool = False, device=None,
                 dtype=None) -> None:
        if predict and tracker_size is None:
            raise ValueError("SNLIExampleSPINN: predict needs a tracker (give tracker_size)")
        super().__init__(hidden_size, tracker_size=tracker_size, device=device, dtype=dtype)
        self.predict = predict
        if predict:
            self.tracker.transition = nn.Linear(tracker_size, 4, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, tracker_size={self.tracker_size}, predict={self.predict}"

    def forward(self, buffers: Tensor, transitions: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        buffers = self._check_buffers(buffers)
        N, B, W = buffers.shape
        H = self.hidden_size
        if transitions is None:
            if not self.predict:
                raise ValueError("SNLIExampleSPINN: transitions=None needs predict=True (the example's tracker "
                                 "then chooses every transition)")
            S = max(2 * N - 3, 0)
        else:
            if not isinstance(transitions, Tensor) or transitions.dim() != 2 or transitions.size(1) != B:
                raise ValueError(f"SNLIExampleSPINN: expected transitions (steps, {B}) in torchtext codes, got "
                                 f"{tuple(transitions.shape) if isinstance(transitions, Tensor) else transitions!r}")
            S = transitions.size(0)
        dev = buffers.device
        rows = torch.arange(B, device=dev)
        # The table of [h | c] rows: buffer entry n of row b is row n B + b; the node made at step t in row b is
        # row N B + t B + b.
        table = torch.cat([buffers.reshape(N * B, W), buffers.new_zeros(S * B, W)])
        stack = torch.zeros(B, S + 2, dtype=torch.int64, device=dev)
        stack[:, :2] = rows.unsqueeze(1)  # two copies of buffer entry 0 (the pad token)
        size = torch.full((B,), 2, dtype=torch.int64, device=dev)
        pos = torch.full((B,), N - 1, dtype=torch.int64, device=dev)  # the buffer pops from its end
        state = None

        def fail(mask: Tensor, t: int, what: str) -> None:
            if bool(mask.any()):
                b = int(mask.nonzero()[0, 0])
                raise ValueError(f"SNLIExampleSPINN: row {b}, step {t}: {what} (the example raises IndexError "
                                 "here)")

        for t in range(S):
            tracking = None
            if self.tracker is not None:
                fail(pos < 0, t, "the tracker reads the top of an empty buffer")
                fail(size < 2, t, "the tracker reads two stack entries but the stack holds fewer")
                buf_ref = pos.clamp(min=0) * B + rows
                top_ref = stack[rows, (size - 1).clamp(min=0)]
                second_ref = stack[rows, (size - 2).clamp(min=0)]
                state, logits = self.tracker(table[buf_ref, :H], table[top_ref, :H], table[second_ref, :H], state)
                tracking = state[0]
            if self.predict:
                trans = logits.argmax(1)
            else:
                trans = transitions[t].to(dev)
            red = (trans == EXAMPLE_REDUCE).nonzero().squeeze(1)
            if red.numel() > 0:
                fail(size[red] < 2, t, "REDUCE with fewer than two stack entries")
                l_ref, r_ref = stack[red, size[red] - 2], stack[red, size[red] - 1]
                out = self.reduce(table[l_ref], table[r_ref], tracking[red] if tracking is not None else None)
                node_ref = N * B + t * B + red
                table = table.index_put((node_ref,), out)
                stack[red, size[red] - 2] = node_ref
                size[red] -= 1
            sh = (trans == EXAMPLE_SHIFT).nonzero().squeeze(1)
            if sh.numel() > 0:
                fail(pos[sh] < 0, t, "SHIFT from an empty buffer")
                stack[sh, size[sh]] = pos[sh] * B + sh
                size[sh] += 1
                pos[sh] -= 1
        fail(size < 1, S, "the final stack is empty")
        return table[stack[rows, size - 1], :H]
