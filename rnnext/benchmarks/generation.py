"""Character generation: CharGenerator.generate (the fused sampling loop, one op) against a Python loop over
torch.nn.LSTM steps (embedding, LSTM step, linear head, softmax and torch.multinomial per character)."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from ..models import CharGenerator
from .timing import Row, resolve_device, time_interleaved

CONFIG = dict(vocab=128, embed=64, hidden=256, layers=2, steps=500, prime=16, temperature=1.0)


class StockCharModel(nn.Module):
    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    @torch.no_grad()
    def generate(self, prime, steps, temperature, generator):
        out, state = self.rnn(self.embedding(prime))
        logits = self.head(out[:, -1])
        tokens = []
        for _ in range(steps):
            tok = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
            tokens.append(tok)
            out, state = self.rnn(self.embedding(tok), state)
            logits = self.head(out[:, -1])
        return torch.cat(tokens, 1)


def run(rounds: int = 7, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    c = dict(CONFIG)
    if quick:
        rounds, c["steps"] = min(rounds, 3), 200
    torch.manual_seed(0)
    stock = StockCharModel(c["vocab"], c["embed"], c["hidden"], c["layers"]).to(dev).eval()
    ours = CharGenerator(c["vocab"], c["embed"], c["hidden"], c["layers"]).to(dev).eval()
    ours.load_state_dict(stock.state_dict())
    rows: List[Row] = []
    for B in (1, 32):
        prime = torch.randint(0, c["vocab"], (B, c["prime"]), device=dev)
        # torch.multinomial needs a generator on the tensors' device; generate() draws its uniforms on the CPU.
        g1, g2 = torch.Generator(device=dev).manual_seed(1), torch.Generator().manual_seed(1)
        t = time_interleaved({
            "stock": lambda: stock.generate(prime, c["steps"], c["temperature"], g1),
            "rnnext": lambda: ours.generate(prime, c["steps"], temperature=c["temperature"], generator=g2),
        }, rounds, warmup=1, device=dev)
        chars = B * c["steps"]
        rows.append(Row(f"generate {c['steps']} chars, batch {B}", t["stock"], t["rnnext"],
                        extra={"stock_chars_per_s": chars / t["stock"] * 1e3,
                               "rnnext_chars_per_s": chars / t["rnnext"] * 1e3}))
    c["device"] = str(dev)
    return {"config": c, "rows": rows}
