"""ListOps generation and reading, SNLI-style JSONL reading, and the classifiers built on them."""

import json
import os
import statistics

import pytest
import torch

from rnnext.data import listops as L
from rnnext.data import snli
from rnnext.models import SPINNClassifier

ID2TOK = {v: k for k, v in L.TOKEN_ID.items()}


def evaluate_tokens(tokens):
    """Independent evaluator of a ListOps token sequence (stack of open lists)."""
    stack = []
    for t in tokens:
        s = ID2TOK[t]
        if s.startswith("["):
            stack.append((s, []))
        elif s == "]":
            op, vals = stack.pop()
            v = {"[MIN": min, "[MAX": max, "[SM": lambda a: sum(a) % 10,
                 "[MED": lambda a: int(statistics.median(a))}[op](vals)
            if not stack:
                return v
            stack[-1][1].append(v)
        else:
            if not stack:
                return int(s)
            stack[-1][1].append(int(s))


def test_generated_listops_follows_the_recipe():
    data = L.generate_listops(3000, seed=5, max_length=60)
    assert len({tuple(e.tokens) for e in data}) == 3000  # deduplicated
    for e in data:
        assert len(e.tokens) <= 60 and e.label == evaluate_tokens(e.tokens)
        assert len(e.transitions) == 2 * len(e.tokens) - 1
        assert ID2TOK[e.tokens[0]] in L.OPERATORS and ID2TOK[e.tokens[-1]] == "]"
        depth = 0
        for t in e.tokens:  # a list never nests past depth 20
            depth += ID2TOK[t].startswith("[")
            depth -= ID2TOK[t] == "]"
            assert depth <= 20
    again = L.generate_listops(3000, seed=5, max_length=60)
    assert [e.tokens for e in again] == [e.tokens for e in data]  # seedable
    assert {e.label for e in data} == set(range(10))


def test_listops_tsv_reader_and_batches(tmp_path):
    path = tmp_path / "lo.tsv"
    path.write_text("7\t( ( ( [MAX 2 ) 9 ) ] )\n3\t( ( ( ( [SM 1 ) 1 ) ( ( ( [MIN 5 ) 1 ) ] ) ) ] )\n")
    data = L.read_listops_tsv(str(path))
    assert [ID2TOK[t] for t in data[0].tokens] == ["[MAX", "2", "9", "]"]
    assert data[0].transitions == [0, 0, 1, 0, 1, 0, 1] and data[0].label == 7
    assert [evaluate_tokens(e.tokens) for e in data] == [9, 3]
    batch = L.collate(data)
    assert batch.tokens.shape == (8, 2) and batch.transitions.shape == (15, 2)
    assert batch.transitions[:8, 0].tolist() == [-1] * 8  # left-padded
    bad = tmp_path / "bad.tsv"
    bad.write_text("x\t( 1 )\n")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        L.read_listops_tsv(str(bad))


def test_released_listops_test_split_labels_if_present():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "listops", "test_d20s.tsv")
    if not os.path.exists(path):
        pytest.skip("the released ListOps test split is not present beside the project")
    data = L.read_listops_tsv(path)
    assert len(data) == 10000
    assert all(evaluate_tokens(e.tokens) == e.label for e in data)


def test_snli_jsonl_reader_and_pair_classifier(tmp_path):
    lines = [
        {"sentence1_binary_parse": "( ( The cat ) ( sat down ) )", "sentence2_binary_parse": "( A ( cat sat ) )",
         "gold_label": "entailment"},
        {"sentence1_binary_parse": "( ( A dog ) runs )", "sentence2_binary_parse": "( ( A cat ) ( is asleep ) )",
         "gold_label": "contradiction"},
        {"sentence1_binary_parse": "( no label )", "sentence2_binary_parse": "( at all )", "gold_label": "-"},
    ]
    path = tmp_path / "snli.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    examples, vocab = snli.read_snli_jsonl(str(path))
    assert len(examples) == 2 and [e.label for e in examples] == [0, 2]
    p = examples[0].premise
    assert [vocab.itos[i] for i in p.tokens] == ["the", "cat", "sat", "down"]
    assert p.transitions == [0, 0, 1, 0, 0, 1, 1]
    test_examples, _ = snli.read_snli_jsonl(str(path), vocab=vocab, grow_vocab=False)
    assert len(vocab) == len(snli.Vocab(vocab.itos[2:]))
    prem, hyp, labels = snli.collate_pairs(examples)
    torch.manual_seed(0)
    model = SPINNClassifier(len(vocab), 8, 6, 3, tracker_size=4, pair=True)
    logits = model(prem, hyp)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
