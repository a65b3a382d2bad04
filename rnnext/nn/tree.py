"""Tree-structured modules: the TreeLSTM composition (SPINN's Reduce), the Tracker, SPINN itself, and ThinStack,
the stack layout for running a user's own composition batched over all rows from a loop over steps.

Conventions (as in the 2017 PyTorch SNLI example, whose checkpoints load): token states are rows [h | c] of
width 2H; buffers are (N, B, 2H) (batch_first: (B, N, 2H)), row b holding its tokens left to right;
transitions are (S, B) int64 (batch_first: (B, S)) with SHIFT = 0, REDUCE = 1, PAD = -1.
"""

from __future__ import annotations

import contextlib
import math
import platform
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _ops
from .lstm import LSTMCell, _autocast_dtype

__all__ = ["SHIFT", "REDUCE", "PAD", "TreeLSTMCell", "Tracker", "SPINN", "SPINNParse", "ThinStack"]

SHIFT, REDUCE, PAD = 0, 1, -1


# ATen's bfloat16 GEMM on x86 CPUs below AVX-512 (ATen's CPU capability DEFAULT or AVX2) is a generic loop, 20-40x
# slower than its float32 GEMM (measured on an AVX2 AMD EPYC: 0.7-1.8 against 17-32 GFLOP/s). A product of two
# bfloat16 numbers is exact in float32, so a float32 GEMM of the same values is a bfloat16 GEMM with float32
# accumulation (up to the order of the sums); the bfloat16 Linear maps of TreeLSTMCell (bfloat16 modules, and
# float32 ones under CPU autocast to bfloat16) run that way there.
_SLOW_CPU_BF16_GEMM = (platform.machine().lower() in ("x86_64", "amd64")
                       and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"))


def _bf16_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """layer(x); where that is a bfloat16 GEMM on a CPU whose bfloat16 GEMM is slow (a bfloat16 layer and input,
    or a CPU autocast region of dtype bfloat16), the same bfloat16 values through float32's GEMM, rounded back to
    bfloat16 as nn.Linear's output is (and the gradients as autocast's casts round them)."""
    if not (_SLOW_CPU_BF16_GEMM and x.device.type == "cpu"):
        return layer(x)
    low = torch.bfloat16
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != low or x.dtype not in (torch.float32, low):
            return layer(x)
        region = torch.autocast("cpu", enabled=False)
    elif x.dtype == low and layer.weight.dtype == low:
        region = contextlib.nullcontext()
    else:
        return layer(x)
    with region:  # (outside autocast the casts to bfloat16 change nothing)
        bias = None if layer.bias is None else layer.bias.to(low).float()
        return F.linear(x.to(low).float(), layer.weight.to(low).float(), bias).to(low)


class TreeLSTMCell(nn.Module):
    r"""The TreeLSTM composition of SPINN (the seed's ``Reduce``), run by the fused ``rnnext::treelstm_cell`` op.

    ``lstm_in = left_h W_l^T + b + right_h W_r^T (+ tracking W_t^T)`` split into a, i, f1, f2, o;
    ``c = tanh(a) sigmoid(i) + sigmoid(f1) c_left + sigmoid(f2) c_right``, ``h = sigmoid(o) tanh(c)``.
    Submodules ``left`` (Linear H -> 5H with bias), ``right`` (no bias) and ``track`` (tracker -> 5H, no bias),
    initialised as ``nn.Linear`` does. ``forward(left, right, tracking=None)`` takes [h | c] rows (M, 2H) and
    returns the composed [h | c] rows (M, 2H).
    """

    def __init__(self, hidden_size: int, tracker_size: Optional[int] = None, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"TreeLSTMCell: hidden_size must be a positive integer, got {hidden_size!r}")
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.tracker_size = tracker_size
        self.left = nn.Linear(hidden_size, 5 * hidden_size, **factory)
        self.right = nn.Linear(hidden_size, 5 * hidden_size, bias=False, **factory)
        if tracker_size is not None:
            self.track = nn.Linear(tracker_size, 5 * hidden_size, bias=False, **factory)

    def composition_weight(self) -> Tensor:
        """[W_l W_r (W_t)], (5H, 2H (+ tracker)): the composition as one matrix, as the thin-stack op takes it."""
        ws = [self.left.weight, self.right.weight] + ([self.track.weight] if self.tracker_size is not None else [])
        return torch.cat(ws, 1)

    def forward(self, left: Tensor, right: Tensor, tracking: Optional[Tensor] = None) -> Tensor:
        H = self.hidden_size
        for name, t in (("left", left), ("right", right)):
            if t.dim() != 2 or t.size(1) != 2 * H:
                raise ValueError(f"TreeLSTMCell: expected {name} rows [h | c] of shape (M, {2 * H}), got "
                                 f"{tuple(t.shape)}")
        if (tracking is None) != (self.tracker_size is None):
            raise ValueError("TreeLSTMCell: tracking must be given exactly when the cell has a tracker "
                             f"(tracker_size={self.tracker_size})")
        lstm_in = _bf16_linear(self.left, left[:, :H]) + _bf16_linear(self.right, right[:, :H])
        if tracking is not None:
            lstm_in = lstm_in + _bf16_linear(self.track, tracking)
        # (Under autocast the Linear maps run in the autocast dtype; the cell states follow them.)
        h, c, _ = _ops.ops.treelstm_cell(lstm_in, left[:, H:].to(lstm_in.dtype), right[:, H:].to(lstm_in.dtype))
        return torch.cat([h, c], 1)


class Tracker(nn.Module):
    """SPINN's tracker: an LSTMCell (``rnn``, input 3H) reading the h halves of the buffer top, stack top and
    stack second; with ``predict_transitions`` a ``transition`` Linear(tracker -> 2) gives SHIFT/REDUCE logits."""

    def __init__(self, hidden_size: int, tracker_size: int, predict_transitions: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__()
        if not isinstance(tracker_size, int) or tracker_size <= 0:
            raise ValueError(f"Tracker: tracker_size must be a positive integer, got {tracker_size!r}")
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.tracker_size = tracker_size
        self.rnn = LSTMCell(3 * hidden_size, tracker_size, **factory)
        self.transition = nn.Linear(tracker_size, 2, **factory) if predict_transitions else None

    def forward(self, buffer_top: Tensor, stack_top: Tensor, stack_second: Tensor,
                state: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tuple[Tensor, Tensor], Optional[Tensor]]:
        """One step from the h halves (B, H) of the three entries; returns ((h, c), logits or None)."""
        h, c = self.rnn(torch.cat([buffer_top, stack_top, stack_second], 1), state)
        return (h, c), (self.transition(h) if self.transition is not None else None)


class SPINNParse(NamedTuple):
    """What SPINN returns when it parses by itself (``transitions=None``)."""

    h: Tensor            # (B, H) the final stack top
    transitions: Tensor  # (S, B) the transitions taken (PAD after a row is complete); (B, S) with batch_first
    log_probs: Tensor    # (S, B) log-probability of each transition taken (0 for PAD); (B, S) with batch_first


class SPINN(nn.Module):
    r"""SPINN (Bowman et al. 2016) over a batch, run by the fused thin-stack op ``rnnext::spinn_encode``.

    ``forward(buffers, transitions=None, lengths=None)``:

    - with ``transitions``: runs them (SHIFT 0, REDUCE 1, PAD -1; rows left-padded with PAD) in one op call
      and returns the h of every row's final stack top (B, H); with ``predict_transitions`` it returns
      ``(h, logits)``, the tracker's SHIFT/REDUCE logits at every step ((S, B, 2)) for a transition loss;
    - with ``transitions=None`` (needs ``predict_transitions``): parses by itself, masking invalid moves,
      sampling in training mode and taking the argmax in eval mode, and returns a :class:`SPINNParse`
      (h, transitions, log_probs) so that a REINFORCE loss is one line.

    ``lengths`` (the token count of each row), when given, must agree with the SHIFTs. Submodules ``reduce``
    (:class:`TreeLSTMCell`) and ``tracker`` (:class:`Tracker`, when ``tracker_size`` is given) carry the 2017
    PyTorch SNLI example's parameter names, so its checkpoints load.
    """

    def __init__(self, hidden_size: int, tracker_size: Optional[int] = None, predict_transitions: bool = False,
                 batch_first: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if predict_transitions and tracker_size is None:
            raise ValueError("SPINN: predict_transitions needs a tracker (give tracker_size)")
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.tracker_size = tracker_size
        self.predict_transitions = predict_transitions
        self.batch_first = batch_first
        self.reduce = TreeLSTMCell(hidden_size, tracker_size, **factory)
        self.tracker = (Tracker(hidden_size, tracker_size, predict_transitions, **factory)
                        if tracker_size is not None else None)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, tracker_size={self.tracker_size}, "
                f"predict_transitions={self.predict_transitions}, batch_first={self.batch_first}")

    @staticmethod
    def from_snli_example(source, device=None, dtype=None):
        """A checkpoint of the 2017 PyTorch SNLI example's SPINN as an :class:`~rnnext.nn.SNLIExampleSPINN`,
        which takes that example's inputs and gives its numbers (torchtext transition codes, reversed buffers,
        the pad token's state as the stack's null, the 4-way transition layer with ``predict``).

        ``source``: the example's ``SPINN`` module, its state dict, or a whole ``SNLIClassifier`` state dict (the
        ``encoder.`` entries are taken). Sizes and ``predict`` are read from the weights. ``device``/``dtype``:
        where and in what to build it (default: the weights')."""
        from .snli_example import SNLIExampleSPINN

        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        if any(k.startswith("encoder.") for k in state):
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        if "reduce.left.weight" not in state:
            raise ValueError("SPINN.from_snli_example: expected the example's SPINN weights (reduce.left.weight, "
                             f"...), got keys {sorted(state)[:6]}")
        w = state["reduce.left.weight"]
        hidden = w.shape[1]
        if tuple(w.shape) != (5 * hidden, hidden):
            raise ValueError(f"SPINN.from_snli_example: reduce.left.weight should be (5H, H), got {tuple(w.shape)}")
        tracker = state["reduce.track.weight"].shape[1] if "reduce.track.weight" in state else None
        predict = "tracker.transition.weight" in state
        model = SNLIExampleSPINN(hidden, tracker, predict, device=device if device is not None else w.device,
                                 dtype=dtype if dtype is not None else w.dtype)
        model.load_state_dict(state)
        return model

    def _check_buffers(self, buffers: Tensor, cast: Optional[torch.dtype] = None) -> Tensor:
        """The buffers checked, in (N, B, 2H) layout, contiguous; in ``cast`` (an autocast region's dtype, any
        floating dtype accepted) when given."""
        if not isinstance(buffers, Tensor):
            raise TypeError(f"SPINN: expected buffers to be a Tensor, got {type(buffers).__name__}")
        if buffers.dim() != 3:
            raise ValueError(f"SPINN: expected buffers of shape {'(B, N, 2H)' if self.batch_first else '(N, B, 2H)'}"
                             f", got {tuple(buffers.shape)}")
        if buffers.size(-1) != 2 * self.hidden_size:
            raise ValueError(f"SPINN: expected buffer rows [h | c] of width 2 * hidden_size = "
                             f"{2 * self.hidden_size}, got {buffers.size(-1)}")
        ref = self.reduce.left.weight
        if cast is not None and buffers.is_floating_point() and buffers.device == ref.device:
            buffers = buffers.to(cast)
        elif buffers.dtype != ref.dtype or buffers.device != ref.device:
            raise TypeError(f"SPINN: expected buffers of dtype {ref.dtype} on {ref.device} (the parameters'), got "
                            f"{buffers.dtype} on {buffers.device}")
        return (buffers.transpose(0, 1) if self.batch_first else buffers).contiguous()

    def forward(self, buffers: Tensor, transitions: Optional[Tensor] = None,
                lengths: Optional[Union[Tensor, list]] = None):
        # Under torch.autocast a float32 SPINN with given transitions runs in the autocast dtype (its compositions
        # and tracker are linear maps, which autocast lowers): buffers and weights are cast, the result is in
        # that dtype, and the float32 parameters get float32 gradients. The parse loop (transitions=None) runs
        # in the parameters' dtype.
        cast = _autocast_dtype(True, buffers, self.reduce.left.weight.dtype)
        if cast is not None and transitions is None:
            with torch.autocast(buffers.device.type, enabled=False):
                return self.forward(buffers.to(self.reduce.left.weight.dtype), None, lengths)
        buffers = self._check_buffers(buffers, cast)
        N, B = buffers.shape[:2]
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
            if lengths.shape != (B,):
                raise ValueError(f"SPINN: expected lengths of shape ({B},), got {tuple(lengths.shape)}")
        if transitions is None:
            if not self.predict_transitions:
                raise ValueError("SPINN: transitions=None means parsing by itself, which needs "
                                 "predict_transitions=True")
            return self._parse(buffers, lengths)
        if not isinstance(transitions, Tensor) or transitions.dim() != 2:
            raise ValueError("SPINN: expected transitions as a 2-D int64 tensor "
                             f"{'(B, S)' if self.batch_first else '(S, B)'}")
        if transitions.dtype != torch.int64:
            raise TypeError(f"SPINN: expected int64 transitions, got {transitions.dtype}")
        tr = (transitions.t() if self.batch_first else transitions).contiguous().cpu()
        if tr.size(1) != B:
            raise ValueError(f"SPINN: transitions cover {tr.size(1)} rows but buffers {B}")
        rnn = self.tracker.rnn if self.tracker is not None else None
        params = [buffers, self.reduce.left.weight, self.reduce.right.weight]
        train = torch.is_grad_enabled() and any(p.requires_grad for p in params + list(self.parameters()))

        def w(p: Optional[Tensor]) -> Optional[Tensor]:
            return p.to(cast) if p is not None and cast is not None else p

        top, tracker_h, *_ = _ops.ops.spinn_encode(
            buffers, tr, lengths, w(self.reduce.composition_weight()), w(self.reduce.left.bias),
            w(rnn.weight_ih) if rnn is not None else None, w(rnn.weight_hh) if rnn is not None else None,
            w(rnn.bias_ih) if rnn is not None else None, w(rnn.bias_hh) if rnn is not None else None, train,
        )
        if not self.predict_transitions:
            return top
        logits = self.tracker.transition(tracker_h)
        return top, (logits.transpose(0, 1) if self.batch_first else logits)

    def _parse(self, buffers: Tensor, lengths: Optional[Tensor]) -> SPINNParse:
        """Shift-reduce parsing driven by the tracker: one iteration per step, batched over rows."""
        N, B, W = buffers.shape
        H = self.hidden_size
        n_tok = lengths if lengths is not None else torch.full((B,), N, dtype=torch.int64)
        if B > 0 and (int(n_tok.min()) < 1 or int(n_tok.max()) > N):
            raise ValueError(f"SPINN: every length must be in [1, {N}], got {n_tok.tolist()}")
        S = max(2 * int(n_tok.max()) - 1, 0) if B > 0 else 0
        table = torch.cat([buffers.new_zeros(1, W), buffers.reshape(N * B, W), buffers.new_zeros(S * B, W)])
        # On a GPU the stack lives on the device and every row composes at every step (kept where it reduced),
        # so the loop never waits for the device; on the CPU only the reducing rows compose.
        dev = buffers.device
        sync_free = dev.type != "cpu" or _SYNC_FREE_PARSE_ON_CPU
        n_tok = n_tok.to(dev, non_blocking=True)
        rows = torch.arange(B, device=dev)
        stack = torch.zeros(B, S + 3, dtype=torch.int64, device=dev)  # references; two nulls at the bottom
        size = torch.full((B,), 2, dtype=torch.int64, device=dev)
        pos = torch.zeros(B, dtype=torch.int64, device=dev)
        state = None
        taken, logps = [], []
        for t in range(S):
            buf_ref = torch.where(pos < n_tok, 1 + pos * B + rows, torch.zeros_like(pos))
            top_ref = stack[rows, size - 1]
            second_ref = stack[rows, size - 2]
            state, logits = self.tracker(table[buf_ref, :H], table[top_ref, :H], table[second_ref, :H], state)
            can_shift = pos < n_tok
            can_reduce = size >= 4
            done = ~can_shift & ~can_reduce
            mask = torch.stack([can_shift, can_reduce], 1)
            # Invalid moves get probability 0 (finished rows: a dummy uniform choice, replaced by PAD below).
            masked = logits.masked_fill(~mask, -math.inf).masked_fill(done.unsqueeze(1), 0.0)
            logp_all = F.log_softmax(masked, 1)
            if self.training:  # inverse CDF over the two moves (torch.multinomial would synchronize a GPU)
                u = torch.rand(B, dtype=logp_all.dtype, device=logp_all.device)
                choice = (u >= logp_all[:, 0].detach().exp()).long()
            else:
                choice = masked.argmax(1)
            trans = torch.where(done, torch.full_like(choice, PAD), choice)
            logp = logp_all.gather(1, choice.unsqueeze(1)).squeeze(1)
            logps.append(logp.masked_fill(done, 0.0))
            taken.append(trans)
            if sync_free:
                table = self._parse_step_masked(table, stack, size, pos, trans, state[0], 1 + N * B + t * B, B)
                continue
            red = (trans == REDUCE).nonzero().squeeze(1)
            if red.numel() > 0:
                l_ref, r_ref = stack[red, size[red] - 2], stack[red, size[red] - 1]
                out = self.reduce(table[l_ref], table[r_ref], state[0][red])
                node_ref = 1 + N * B + t * B + red
                table = table.index_put((node_ref,), out)
                stack[red, size[red] - 2] = node_ref
                size[red] -= 1
            sh = (trans == SHIFT).nonzero().squeeze(1)
            if sh.numel() > 0:
                stack[sh, size[sh]] = 1 + pos[sh] * B + sh
                size[sh] += 1
                pos[sh] += 1
        h = table[stack[:, 2], :H] if B > 0 else buffers.new_zeros(0, H)
        transitions = torch.stack(taken) if taken else torch.zeros(0, B, dtype=torch.int64, device=dev)
        log_probs = torch.stack(logps) if logps else buffers.new_zeros(0, B)
        if self.batch_first:
            transitions, log_probs = transitions.t(), log_probs.t()
        return SPINNParse(h, transitions, log_probs)

    def _parse_step_masked(self, table: Tensor, stack: Tensor, size: Tensor, pos: Tensor, trans: Tensor,
                           tracker_h: Tensor, first_node: int, B: int) -> Tensor:
        """One parse step without data-dependent shapes: every row composes its two top references, the rows
        that REDUCE keep the result as a new node, the rows that SHIFT push their buffer top. Updates stack, size
        and pos in place; returns the table with the new nodes."""
        rows = torch.arange(B, device=stack.device)
        is_red, is_sh = trans == REDUCE, trans == SHIFT
        l_ref, r_ref = stack[rows, size - 2], stack[rows, size - 1]
        out = self.reduce(table[l_ref], table[r_ref], tracker_h)
        node_ref = first_node + rows
        table = table.index_put((node_ref,), torch.where(is_red.unsqueeze(1), out, table[node_ref]))
        stack[rows, size - 2] = torch.where(is_red, node_ref, l_ref)
        stack[rows, size] = torch.where(is_sh, 1 + pos * B + rows, stack[rows, size])
        size += is_sh.long() - is_red.long()
        pos += is_sh.long()
        return table


# Tests set this to run the GPU's sync-free parse loop on the CPU.
_SYNC_FREE_PARSE_ON_CPU = False


class ThinStack:
    """The thin-stack layout of a batch of transition sequences, for running any composition batched over rows
    from a short loop over steps (one iteration per step, never per example)::

        stack = ThinStack(buffers, transitions)            # buffers (N, B, D), transitions (S, B)
        for t in range(stack.steps):
            buf, top, second = stack.tracker_inputs(t)     # (B, D) each: what a tracker reads before step t
            rows, left, right = stack.children(t)          # the rows that REDUCE at step t and their children
            if rows.numel():
                stack.push(t, my_composition(left, right))
        result = stack.result()                            # (B, D): every row's final stack top

    Entries are rows of one table, cat([zeros(1, D), buffers.flatten(0, 1), nodes]); pushes write nodes in
    place (differentiably). The transitions are checked as the fused SPINN op checks them.
    """

    def __init__(self, buffers: Tensor, transitions: Tensor, lengths: Optional[Tensor] = None) -> None:
        if buffers.dim() != 3:
            raise ValueError(f"ThinStack: expected buffers (N, B, D), got shape {tuple(buffers.shape)}")
        N, B, D = buffers.shape
        tr = transitions.contiguous().cpu()
        ln = torch.as_tensor(lengths, dtype=torch.int64).cpu() if lengths is not None else None
        (self.left, self.right, self.node, self.buffer_top, self.stack_top, self.stack_second,
         self.final_top) = _ops.ops.thin_stack_plan(tr, N, ln)
        self.steps = tr.size(0)
        num_nodes = int((self.node >= 0).sum())
        self.table = torch.cat([buffers.new_zeros(1, D), buffers.reshape(N * B, D), buffers.new_zeros(num_nodes, D)])

    def tracker_inputs(self, t: int) -> Tuple[Tensor, Tensor, Tensor]:
        """The buffer top, stack top and stack second of every row before step t (zeros where empty)."""
        return self.table[self.buffer_top[t]], self.table[self.stack_top[t]], self.table[self.stack_second[t]]

    def children(self, t: int) -> Tuple[Tensor, Tensor, Tensor]:
        """(rows, left, right): the rows that REDUCE at step t and the entries they compose."""
        rows = (self.node[t] >= 0).nonzero().squeeze(1)
        return rows, self.table[self.left[t, rows]], self.table[self.right[t, rows]]

    def push(self, t: int, values: Tensor) -> None:
        """Stores the results of step t's compositions (one row per reducing row, in row order)."""
        rows = (self.node[t] >= 0).nonzero().squeeze(1)
        if values.shape != (rows.numel(), self.table.size(1)):
            raise ValueError(f"ThinStack.push: expected values of shape ({rows.numel()}, {self.table.size(1)}), got "
                             f"{tuple(values.shape)}")
        self.table = self.table.index_put((self.node[t, rows],), values)

    def result(self) -> Tensor:
        """Every row's final stack top (B, D)."""
        return self.table[self.final_top]
