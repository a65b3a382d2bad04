"""A character-level language model: CharVocab, and CharGenerator (embedding -> rnnext LSTM, GRU or RNN ->
linear head) with teacher-forced training and a fused sampling loop for generation."""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _ops
from ..nn.lstm import LSTM
from ..nn.rnn import GRU, RNN

__all__ = ["CharVocab", "CharGenerator"]


class CharVocab:
    """Characters <-> ids. Id 0 stands for any character the vocabulary lacks."""

    UNK = "\ufffd"

    def __init__(self, chars: Iterable[str]) -> None:
        chars = [c for c in dict.fromkeys(chars) if c != self.UNK]
        self.itos: List[str] = [self.UNK] + chars
        self.stoi: Dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str, max_size: Optional[int] = None) -> "CharVocab":
        """The characters of text, most frequent first (at most max_size, the unknown id included)."""
        counts: Dict[str, int] = {}
        for ch in text:
            counts[ch] = counts.get(ch, 0) + 1
        chars = sorted(counts, key=lambda c: (-counts[c], c))
        if max_size is not None:
            chars = chars[: max_size - 1]
        return cls(sorted(chars))

    def __len__(self) -> int:
        return len(self.itos)

    def unknown(self, text: str) -> List[str]:
        """The distinct characters of text that the vocabulary lacks."""
        return sorted({c for c in text if c not in self.stoi})

    def encode(self, text: str) -> List[int]:
        return [self.stoi.get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] if 0 <= i < len(self.itos) else self.UNK for i in ids)

    def state_dict(self) -> Dict[str, List[str]]:
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: Dict[str, List[str]]) -> "CharVocab":
        return cls(state["itos"][1:])


class CharGenerator(nn.Module):
    """Character RNN: ``embedding`` -> ``rnn`` (rnnext.nn.LSTM, GRU or RNN (tanh), batch_first) -> ``head``
    (Linear hidden -> vocab).

    ``cell``: "lstm" (default), "gru" or "rnn". ``forward(tokens, state=None) -> (logits, state)`` for
    teacher-forced training (tokens (B, T)); the state is ``(h, c)`` for LSTM and ``h`` for GRU and RNN.
    ``generate(prime, steps, temperature=1.0, top_k=None, generator=None)`` runs the prime through the model and
    then the whole sampling loop in one op (``rnnext::lstm_generate``, or ``rnnext::rnn_generate`` for GRU and
    RNN): ``prime`` (B, P) token ids, P >= 1; temperature 0 is greedy argmax; ``top_k`` keeps the k most likely;
    ``generator`` (a torch.Generator) fixes the draws. Returns the generated ids (B, steps).
    ``generate_chunks(...)`` yields the same in pieces of ``chunk_size`` steps, in bounded memory.
    """

    _CELLS = {"lstm": (LSTM, None), "gru": (GRU, "gru"), "rnn": (RNN, "rnn_tanh")}

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.0, cell: str = "lstm") -> None:
        super().__init__()
        if cell not in self._CELLS:
            raise ValueError(f"CharGenerator: cell must be 'lstm', 'gru' or 'rnn', got {cell!r}")
        self.vocab_size, self.embed_dim, self.hidden_size, self.num_layers = vocab_size, embed_dim, hidden_size, num_layers
        self.cell = cell
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = self._CELLS[cell][0](embed_dim, hidden_size, num_layers=num_layers, batch_first=True,
                                        dropout=dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def extra_repr(self) -> str:
        return f"cell={self.cell!r}"

    def forward(self, tokens: Tensor, state=None):
        if tokens.dim() != 2:
            raise ValueError(f"CharGenerator: expected tokens (batch, time), got shape {tuple(tokens.shape)}")
        out, state = self.rnn(self.embedding(tokens), state)
        return self.head(out), state

    def _check_generate_args(self, where: str, prime: Tensor, steps: int, temperature: float,
                             top_k: Optional[int]) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"CharGenerator.{where}: steps must be a non-negative integer, got {steps!r}")
        if not (temperature >= 0 and temperature == temperature and temperature != float("inf")):
            raise ValueError(f"CharGenerator.{where}: temperature must be finite and >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"CharGenerator.{where}: top_k must be a positive integer or None, got {top_k!r}")
        if prime.dim() != 2 or prime.size(1) < 1:
            raise ValueError(f"CharGenerator.{where}: expected prime (batch, P >= 1), got shape {tuple(prime.shape)}")

    def _sample(self, last: Tensor, state, steps: int, temperature: float, top_k: Optional[int],
                generator: Optional[torch.Generator]) -> Tensor:
        """`steps` draws in one op from the logits `last` (B, V) and the state that produced them."""
        B = last.size(0)
        if temperature > 0:
            uniforms = torch.rand(steps, B, generator=generator)
        else:
            uniforms = torch.zeros(steps, B)
        rnn = self.rnn
        names = rnn._all_weights
        w_ih = [getattr(rnn, n[0]) for n in names]
        w_hh = [getattr(rnn, n[1]) for n in names]
        b_ih = [getattr(rnn, n[2]) if rnn.bias else None for n in names]
        b_hh = [getattr(rnn, n[3]) if rnn.bias else None for n in names]
        common = (w_ih, w_hh, b_ih, b_hh, self.head.weight, self.head.bias, uniforms.to(last.device),
                  float(temperature), min(int(top_k or 0), last.size(1)))  # k >= V keeps every token
        last = last.contiguous()
        if self.cell == "lstm":
            h, c = state
            return _ops.ops.lstm_generate(last, h, c, self.embedding.weight, *common)
        return _ops.ops.rnn_generate(last, state, self.embedding.weight, *common, self._CELLS[self.cell][1])

    @torch.no_grad()
    def generate(self, prime: Tensor, steps: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Runs ``prime`` (B, P) through the model, then draws ``steps`` tokens per row in one op (greedy when
        ``temperature`` is 0; ``top_k`` keeps the k most likely; ``generator`` fixes the draws). Returns the
        drawn ids (B, steps). The model's train/eval mode is restored afterwards."""
        self._check_generate_args("generate", prime, steps, temperature, top_k)
        was_training = self.training
        self.eval()
        try:
            logits, state = self(prime)
            return self._sample(logits[:, -1], state, steps, temperature, top_k, generator)
        finally:
            self.train(was_training)

    def generate_chunks(self, prime: Tensor, steps: int, temperature: float = 1.0, top_k: Optional[int] = None,
                        generator: Optional[torch.Generator] = None,
                        chunk_size: int = 65536) -> Iterator[Tensor]:
        """``generate`` in pieces: yields the draws (B, n) of ``chunk_size`` steps at a time (the last piece may
        be shorter), so that memory stays bounded however many steps are asked for (``rnnext generate``
        streams its output this way). Between pieces the model reads the piece to carry its state on; the
        draws follow the same distribution as ``generate``'s but, beyond the first piece, are not bit-for-bit
        the sample ``generate`` would draw from the same generator."""
        self._check_generate_args("generate_chunks", prime, steps, temperature, top_k)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"CharGenerator.generate_chunks: chunk_size must be a positive integer, got {chunk_size!r}")
        left = steps
        last = state = None
        while left > 0:
            n = min(chunk_size, left)
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    if last is None:
                        logits, state = self(prime)
                        last = logits[:, -1]
                    tokens = self._sample(last, state, n, temperature, top_k, generator)
                    left -= n
                    if left > 0:  # carry the state through the piece: the next piece starts after its last draw
                        out, state = self.rnn(self.embedding(tokens), state)
                        last = self.head(out[:, -1])
            finally:
                self.train(was_training)
            yield tokens
