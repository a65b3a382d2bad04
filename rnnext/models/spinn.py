"""SPINNClassifier: embedding -> projection to [h | c] -> SPINN -> MLP, for one sentence (ListOps) or a sentence
pair (NLI, features [p, h, p - h, p * h])."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..nn.tree import SPINN

__all__ = ["SPINNClassifier"]

Sentence = Tuple[Tensor, Tensor]  # (tokens (N, B), transitions (S, B))


class SPINNClassifier(nn.Module):
    """A sentence (or sentence-pair) classifier on SPINN.

    Args:
        vocab_size, embed_dim: the token embedding (index 0 is padding).
        hidden_size: SPINN's H; tokens are projected to [h | c] rows of width 2H.
        num_classes: output classes.
        tracker_size: SPINN's tracker (None: a plain TreeLSTM over the given parses).
        mlp_hidden, mlp_layers: the classifier MLP on the encoding (ReLU between layers).
        pair: classify sentence pairs with features [p, h, p - h, p * h].
        dropout: on the embeddings and the MLP's hidden layers.

    ``forward(tokens, transitions, lengths=None)`` for single sentences (tokens (N, B), transitions (S, B));
    ``forward((p_tokens, p_transitions), (h_tokens, h_transitions))`` with ``pair=True``. Returns logits (B, C).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_classes: int,
                 tracker_size: Optional[int] = None, mlp_hidden: int = 128, mlp_layers: int = 2,
                 pair: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.pair = pair
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.projection = nn.Linear(embed_dim, 2 * hidden_size)
        self.spinn = SPINN(hidden_size, tracker_size=tracker_size)
        self.dropout = nn.Dropout(dropout)
        layers = []
        width = (4 if pair else 1) * hidden_size
        for _ in range(mlp_layers - 1):
            layers += [nn.Linear(width, mlp_hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = mlp_hidden
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def encode(self, tokens: Tensor, transitions: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if self.dropout.p == 0 or not self.training:
            # The projection acts on each token alone: project the vocabulary once and look rows up (the same
            # numbers as projecting every token slot, for a fraction of the work).
            buffers = nn.functional.embedding(tokens, self.projection(self.embedding.weight))
        else:
            buffers = self.projection(self.dropout(self.embedding(tokens)))
        return self.spinn(buffers, transitions, lengths)

    def forward(self, tokens, transitions=None, lengths: Optional[Tensor] = None) -> Tensor:
        if self.pair:
            if not (isinstance(tokens, tuple) and isinstance(transitions, tuple)):
                raise TypeError("SPINNClassifier(pair=True): call as model((p_tokens, p_transitions), "
                                "(h_tokens, h_transitions))")
            p = self.encode(*tokens)
            h = self.encode(*transitions)
            features = torch.cat([p, h, p - h, p * h], 1)
        else:
            if transitions is None:
                raise ValueError("SPINNClassifier: transitions are required")
            features = self.encode(tokens, transitions, lengths)
        return self.mlp(features)
