"""The GRU and RNN suite of `rnnext bench` (rnnext against stock PyTorch, interleaved in one process, medians).

    python benchmarks/bench_gru_rnn.py [--rounds N] [--quick] [--device cpu|cuda] [--json out.json] [--plot out.png]
"""

import sys

from rnnext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "GRU", *sys.argv[1:]]))
