"""The cells-in-Python-loops suite of `rnnext bench` (LSTMCell, GRUCell, RNNCell one call per step against
stock PyTorch, interleaved in one process, medians).

    python benchmarks/bench_cells.py [--rounds N] [--quick] [--device cpu|cuda] [--json out.json] [--plot out.png]
"""

import sys

from rnnext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "cells", *sys.argv[1:]]))
