"""RNNClassifier: embedding -> recurrent layer over the real lengths -> pooling -> linear."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.lstm import LSTM
from ..nn.rnn import GRU, RNN

__all__ = ["RNNClassifier"]


class RNNClassifier(nn.Module):
    """Classifies padded token sequences.

    Args:
        vocab_size, embed_dim: the token embedding (index 0 is padding).
        hidden_size, num_layers, bidirectional, dropout: the recurrent layer (dropout between layers and on the
            pooled features).
        num_classes: output classes.
        cell: "lstm", "gru" or "rnn" (rnnext.nn.LSTM / GRU / RNN (tanh), run on the real lengths with no
            padding computed).
        pooling: "last" (the final states of all directions), "mean" or "max" (over the real length).

    ``forward(tokens, lengths)``: tokens (B, T) padded, lengths (B,) -> logits (B, num_classes).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_classes: int, cell: str = "lstm",
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 pooling: str = "last") -> None:
        super().__init__()
        if cell not in ("lstm", "gru", "rnn"):
            raise ValueError(f"RNNClassifier: cell must be 'lstm', 'gru' or 'rnn', got {cell!r}")
        if pooling not in ("last", "mean", "max"):
            raise ValueError(f"RNNClassifier: pooling must be 'last', 'mean' or 'max', got {pooling!r}")
        self.cell, self.pooling = cell, pooling
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        kinds = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
        self.rnn = kinds[cell](embed_dim, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                               batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        directions = 2 if bidirectional else 1
        self.out = nn.Linear(directions * hidden_size, num_classes)

    def forward(self, tokens: Tensor, lengths) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"RNNClassifier: expected tokens (B, T), got shape {tuple(tokens.shape)}")
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        x = self.embedding(tokens)
        out, state = self.rnn(x, lengths=lengths)
        h = state[0] if self.cell == "lstm" else state
        if self.pooling == "last":
            directions = 2 if self.bidirectional else 1
            feats = h.view(self.num_layers, directions, h.size(1), h.size(2))[-1]  # last layer, all directions
            feats = feats.transpose(0, 1).reshape(h.size(1), -1)
        else:
            steps = torch.arange(out.size(1), device=out.device)
            valid = (steps.unsqueeze(0) < lengths.to(out.device).unsqueeze(1)).unsqueeze(-1)
            if self.pooling == "mean":
                feats = (out * valid).sum(1) / lengths.to(out.device).clamp(min=1).unsqueeze(1).to(out.dtype)
            else:
                feats = out.masked_fill(~valid, float("-inf")).max(1).values
        return self.out(self.dropout(feats))
