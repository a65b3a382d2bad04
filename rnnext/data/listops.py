"""ListOps (Nangia & Bowman 2018): a generator following its published recipe, a reader for the released TSV
format, and batching into tokens + shift-reduce transitions for SPINN (or plain token sequences).

An expression is a list: an operator token (``[MIN``, ``[MAX``, ``[MED``, ``[SM``), 2-5 arguments, and ``]``.
Each argument is itself a list with probability 0.25 (never beyond depth 20), else a digit 0-9. MED is the
median truncated to an integer, SM the sum mod 10. The binary parse is left-branching inside each list:
``( ( ( [MAX 2 ) 9 ) ] )``.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

OPERATORS = ["[MIN", "[MAX", "[MED", "[SM"]
CLOSE = "]"
VOCAB = [str(d) for d in range(10)] + OPERATORS + [CLOSE]
TOKEN_ID = {t: i + 1 for i, t in enumerate(VOCAB)}  # 0 is padding
VOCAB_SIZE = len(VOCAB) + 1
NUM_CLASSES = 10
SHIFT, REDUCE, PAD = 0, 1, -1


@dataclass
class Example:
    label: int
    tokens: List[int]       # token ids (no brackets)
    transitions: List[int]  # SHIFT / REDUCE, 2 * len(tokens) - 1 of them


def _evaluate(op: str, values: List[int]) -> int:
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(statistics.median(values))
    if op == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def _generate_list(rng: random.Random, depth: int, max_depth: int, max_args: int, value_p: float):
    op = rng.choice(OPERATORS)
    args = []
    for _ in range(rng.randint(2, max_args)):
        if depth + 1 < max_depth and rng.random() < value_p:
            args.append(_generate_list(rng, depth + 1, max_depth, max_args, value_p))
        else:
            args.append(rng.randrange(10))
    return op, args


def _linearize(tree) -> Tuple[int, List[str], List[int]]:
    """(value, tokens, transitions) of a tree (a digit or (op, args)), left-branching inside each list."""
    if isinstance(tree, int):
        return tree, [str(tree)], [SHIFT]
    op, args = tree
    tokens, trans = [op], [SHIFT]
    values = []
    for i, arg in enumerate(args):
        v, t, tr = _linearize(arg)
        values.append(v)
        tokens += t
        trans += tr + [REDUCE]  # (op a1), then (node a_i)
    tokens.append(CLOSE)
    trans += [SHIFT, REDUCE]
    return _evaluate(op, values), tokens, trans


def generate_listops(
    num: int,
    seed: int = 0,
    max_length: Optional[int] = None,
    min_length: int = 1,
    max_depth: int = 20,
    max_args: int = 5,
    value_p: float = 0.25,
    exclude: Optional[set] = None,
    progress: bool = False,
) -> List[Example]:
    """``num`` distinct random expressions (deduplicated by token sequence), with at most ``max_length``
    tokens when given. ``exclude`` holds token tuples to leave out (e.g. a dev set's). ``progress``: a progress
    bar (tqdm) over the expressions."""
    rng = random.Random(seed)
    seen = set() if exclude is None else set(exclude)
    out: List[Example] = []
    attempts = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num, desc="generating ListOps", unit="expr", mininterval=2.0)
    while len(out) < num:
        if bar is not None and len(out) % 4096 == 0:
            bar.update(len(out) - bar.n)
        attempts += 1
        if attempts > 100 * num + 10000:
            raise ValueError(f"generate_listops: could only find {len(out)} distinct expressions of "
                             f"{min_length}..{max_length} tokens, {num} were asked for (allow longer expressions "
                             "or ask for fewer)")
        value, tokens, trans = _linearize(_generate_list(rng, 1, max_depth, max_args, value_p))
        if len(tokens) < min_length or (max_length is not None and len(tokens) > max_length):
            continue
        key = tuple(tokens)
        if key in seen:
            continue
        seen.add(key)
        out.append(Example(value, [TOKEN_ID[t] for t in tokens], trans))
    if bar is not None:
        bar.update(len(out) - bar.n)
        bar.close()
    return out


def examples_to_tensors(examples: Sequence[Example]) -> dict:
    """A list of examples as a few flat int tensors (for a cache file that loads with weights_only=True)."""
    tok_len = torch.tensor([len(e.tokens) for e in examples], dtype=torch.int64)
    tr_len = torch.tensor([len(e.transitions) for e in examples], dtype=torch.int64)
    return {"labels": torch.tensor([e.label for e in examples], dtype=torch.int8),
            "token_lengths": tok_len, "tokens": torch.tensor([t for e in examples for t in e.tokens], dtype=torch.int8),
            "transition_lengths": tr_len,
            "transitions": torch.tensor([t for e in examples for t in e.transitions], dtype=torch.int8)}


def examples_from_tensors(d: dict) -> List[Example]:
    """The inverse of examples_to_tensors."""
    labels, toks, trs = d["labels"].tolist(), d["tokens"].tolist(), d["transitions"].tolist()
    out: List[Example] = []
    a = b = 0
    for label, n, m in zip(labels, d["token_lengths"].tolist(), d["transition_lengths"].tolist()):
        out.append(Example(label, toks[a:a + n], trs[b:b + m]))
        a, b = a + n, b + m
    return out


def parse_bracketed(text: str) -> Tuple[List[str], List[int]]:
    """Tokens and transitions of a bracketed binary parse: each token shifts, each ``)`` reduces."""
    tokens, trans = [], []
    for piece in text.split():
        if piece == "(":
            continue
        if piece == ")":
            trans.append(REDUCE)
        else:
            tokens.append(piece)
            trans.append(SHIFT)
    return tokens, trans


def read_listops_tsv(path: str) -> List[Example]:
    """The released format: ``label<TAB>( ( [MAX 2 ) 9 ) ...`` per line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                label, text = line.split("\t", 1)
                tokens, trans = parse_bracketed(text)
                out.append(Example(int(label), [TOKEN_ID[t] for t in tokens], trans))
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{lineno}: not a ListOps line ({e}): {line[:80]!r}") from e
    return out


@dataclass
class Batch:
    tokens: torch.Tensor       # (N, B) token ids, 0-padded at the end
    transitions: torch.Tensor  # (S, B) left-padded with PAD
    lengths: torch.Tensor      # (B,) token counts
    labels: torch.Tensor       # (B,)


def pad_trees(token_lists: Sequence[Sequence[int]],
              transition_lists: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N, B), 0-padded at the end, and transitions (S, B), left-padded with PAD, of B trees."""
    B = len(token_lists)
    N = max(len(t) for t in token_lists)
    S = max(len(t) for t in transition_lists)
    tokens = torch.zeros(N, B, dtype=torch.int64)
    trans = torch.full((S, B), PAD, dtype=torch.int64)
    for b, (tok, tr) in enumerate(zip(token_lists, transition_lists)):
        tokens[: len(tok), b] = torch.tensor(tok)
        trans[S - len(tr):, b] = torch.tensor(tr)
    return tokens, trans


def collate(examples: Sequence[Example]) -> Batch:
    tokens, trans = pad_trees([e.tokens for e in examples], [e.transitions for e in examples])
    lengths = torch.tensor([len(e.tokens) for e in examples])
    labels = torch.tensor([e.label for e in examples])
    return Batch(tokens, trans, lengths, labels)


def bucketed_batches(examples: Sequence[Example], batch_size: int, rng: random.Random,
                     shuffle: bool = True) -> Iterator[Batch]:
    """Batches of similar lengths (sorted into buckets of 50 batches, shuffled within and across)."""
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: len(examples[j].tokens))
        batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    for idx in batches:
        yield collate([examples[j] for j in idx])
