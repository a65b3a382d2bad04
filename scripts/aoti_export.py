"""Compiles a model holding rnnext modules with AOTInductor for cpp/aoti_run.cpp (C++ without Python):
torch.export -> torch._inductor.aoti_compile_and_package, and saves the inputs and Python's outputs beside the
package, for the C++ program to compare against.

    python scripts/aoti_export.py OUT_DIR      # writes OUT_DIR/model.pt2, inputs.pt, expected.pt
    build/cmake/rnnext_aoti_run OUT_DIR        # loads and runs it from C++ (CMakeLists.txt builds it)

The model: a two-layer bidirectional rnnext LSTM over a padded batch with lengths=, an rnnext GRU and an RNN on
top, and a linear head: every layer op of rnnext in one exported program."""

import os
import sys

import torch

import rnnext


class Demo(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnext.nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = rnnext.nn.GRU(32, 12)
        self.rnn = rnnext.nn.RNN(12, 10, nonlinearity="relu")
        self.head = torch.nn.Linear(10, 3)

    def forward(self, x, lengths):
        y, (h, c) = self.lstm(x, lengths=lengths)
        z, hg = self.gru(y.transpose(0, 1))
        r, _ = self.rnn(z)
        return self.head(r[-1]), h, c, hg


def main(out: str) -> int:
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = Demo().eval()
    x, lengths = torch.randn(4, 6, 8), torch.tensor([6, 2, 5, 3])
    with torch.no_grad():
        program = torch.export.export(model, (x, lengths))
        torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(out, "model.pt2"))
        expected = list(model(x, lengths))
    torch.save([x, lengths], os.path.join(out, "inputs.pt"))
    torch.save(expected, os.path.join(out, "expected.pt"))
    print(f"wrote {out}/model.pt2, inputs.pt, expected.pt ({len(expected)} outputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/aoti"))
