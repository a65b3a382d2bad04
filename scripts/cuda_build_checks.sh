#!/usr/bin/env bash
# Checks of the CUDA build of rnnext (CI's CUDA stage; run in the environment where it is installed: torch with
# CUDA, the extension built with nvcc). The CPU sources are the same as in the CPU build, whose whole suite the
# README's test command runs; what can differ here is the CUDA code and the other torch version. So:
#   1. every rnnext op has a CUDA kernel registered (and the build says it has CUDA);
#   2. tests/test_cuda.py collects (and runs, where a GPU is visible; it skips without one);
#   3. a sample of the CPU suite runs against this build: every op's opcheck/gradcheck tests, the modules'
#      layouts against stock at one size each, and what touches torch's own machinery most (torch.compile and
#      export, ONNX, distributed training, torch.func, checkpoints, the command line).
#
#   bash scripts/cuda_build_checks.sh [extra pytest arguments]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

# From outside the checkout: `python -` puts the working directory on sys.path, and the source tree would
# shadow the installed package.
(cd "$(mktemp -d)" && python - <<'PY'
import torch, rnnext
from rnnext import _build_info
assert _build_info.WITH_CUDA, "the CUDA sources were not built"
ops = sorted({n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("rnnext::")})
assert len(ops) >= 12, ops
missing = [o for o in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"rnnext::{o}", "CUDA")]
print(f"torch {torch.__version__}: {len(ops)} rnnext ops, CUDA kernels registered for {len(ops) - len(missing)}")
assert not missing, f"ops without a CUDA kernel: {missing}"
PY
)

cd "$repo"
echo "-- tests/test_cuda.py"
pytest -q -p no:cacheprovider tests/test_cuda.py "$@"

echo "-- a sample of the CPU suite against the CUDA build"
# Distributed training (gloo under this torch), torch.func, replace_rnns, the one-step paths, the models; of the
# large files every op's opcheck (fake kernels against the real ones) at one layout, torch.compile, torch.export,
# ONNX export, and the checkpoints of earlier versions loaded with weights_only.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # (two test processes on two cores: see tests/conftest.py)
pytest -q -p no:cacheprovider -n 2 tests/test_distributed.py tests/test_func.py tests/test_replace.py \
  tests/test_one_step.py tests/test_models.py tests/test_packing.py tests/test_data.py \
  tests/test_lstm.py tests/test_rnn.py tests/test_gru_rnn.py tests/test_tree.py tests/test_onnx.py \
  tests/test_hardening.py tests/test_bf16.py \
  -k "test_distributed or test_func or test_replace or test_one_step or test_models or test_packing or test_data \
      or (opcheck and (dense or packed-gru or bf16 or spinn or treelstm or cell)) or compile or export \
      or checkpoint" "$@"
