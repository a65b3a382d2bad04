"""SNLI-style natural language inference data (JSONL with ``sentence1_binary_parse``,
``sentence2_binary_parse`` and ``gold_label``) turned into tokens and shift-reduce transitions for SPINN."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .listops import pad_trees, parse_bracketed

LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


class Vocab:
    """Token <-> id, with 0 for padding and 1 for unknown tokens."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: Iterable[str] = (), lower: bool = True) -> None:
        self.lower = lower
        self.itos: List[str] = [self.PAD, self.UNK]
        self.stoi: Dict[str, int] = {self.PAD: 0, self.UNK: 1}
        for t in tokens:
            self.add(t)

    def add(self, token: str) -> int:
        token = token.lower() if self.lower else token
        if token not in self.stoi:
            self.stoi[token] = len(self.itos)
            self.itos.append(token)
        return self.stoi[token]

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> List[int]:
        return [self.stoi.get(t.lower() if self.lower else t, 1) for t in tokens]


@dataclass
class Sentence:
    tokens: List[int]
    transitions: List[int]


@dataclass
class PairExample:
    premise: Sentence
    hypothesis: Sentence
    label: int


def read_snli_jsonl(path: str, vocab: Optional[Vocab] = None, grow_vocab: bool = True,
                    max_examples: Optional[int] = None) -> Tuple[List[PairExample], Vocab]:
    """Reads pairs with a gold label (lines labelled ``-`` are skipped). New tokens extend ``vocab`` when
    ``grow_vocab`` (training data); otherwise they map to ``<unk>``."""
    vocab = vocab if vocab is not None else Vocab()
    out: List[PairExample] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                label = rec["gold_label"]
                if label not in LABELS:
                    continue
                sentences = []
                for key in ("sentence1_binary_parse", "sentence2_binary_parse"):
                    tokens, trans = parse_bracketed(rec[key])
                    if len(trans) != 2 * len(tokens) - 1:
                        raise ValueError(f"{key} is not a complete binary parse")
                    ids = [vocab.add(t) for t in tokens] if grow_vocab else vocab.encode(tokens)
                    sentences.append(Sentence(ids, trans))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not an SNLI record ({e})") from e
            out.append(PairExample(sentences[0], sentences[1], LABELS[label]))
            if max_examples is not None and len(out) >= max_examples:
                break
    return out, vocab


def collate_sentences(sentences: Sequence[Sentence]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, B) 0-padded, transitions (S, B) left-padded with PAD)."""
    return pad_trees([s.tokens for s in sentences], [s.transitions for s in sentences])


def collate_pairs(examples: Sequence[PairExample]):
    """((p_tokens, p_transitions), (h_tokens, h_transitions), labels) for SPINNClassifier(pair=True)."""
    p = collate_sentences([e.premise for e in examples])
    h = collate_sentences([e.hypothesis for e in examples])
    return p, h, torch.tensor([e.label for e in examples])
