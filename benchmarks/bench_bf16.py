"""The bfloat16 suite of `rnnext bench` (rnnext's bfloat16 LSTM and GRU against stock torch.nn's bfloat16 and
rnnext's own float32 on the CPU, interleaved in one process, medians; roofline at the bfloat16 GEMM rate).

    python benchmarks/bench_bf16.py [--rounds N] [--quick] [--json out.json] [--plot out.png]
"""

import sys

from rnnext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "bfloat16", *sys.argv[1:]]))
