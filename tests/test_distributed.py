"""torch.distributed: DistributedDataParallel (gloo, 2 processes started by torchrun) over rnnext models gives
the parameters of one process training on the same global batches; `rnnext train ... --distributed` runs."""

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import ddp_worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def torchrun(args, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.parametrize("model", ["classifier", "spinn"])
def test_ddp_two_processes_equal_one_process(model, tmp_path):
    torchrun([os.path.join(HERE, "ddp_worker.py"), "--model", model, "--out", str(tmp_path / "p")], cwd=tmp_path)
    single = ddp_worker.train(model)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"p.rank{rank}", weights_only=True)
        assert got.keys() == single.keys()
        for k in single:
            torch.testing.assert_close(got[k], single[k], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {k}")
    # the training moved the parameters (the comparison is not of two untouched initialisations)
    assert any(not torch.equal(single[k], v) for k, v in ddp_worker.build(model).state_dict().items())


def test_cli_train_listops_distributed(tmp_path):
    out = tmp_path / "ddp.pt"
    torchrun(["-m", "rnnext", "train", "listops", "--distributed", "--model", "lstm", "--max-steps", "6",
              "--train-size", "600", "--dev-size", "50", "--batch-size", "16", "--max-length", "30",
              "--no-progress", "--test", os.devnull, "--out", str(out)], cwd=tmp_path)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["state"]["step"] == 6 and ckpt["config"]["distributed"] is True


def test_distributed_without_a_launcher_is_a_clear_error(monkeypatch, capsys):
    from rnnext.cli import main

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main(["train", "listops", "--distributed", "--max-steps", "1", "--train-size", "50",
                 "--dev-size", "10", "--no-progress"]) == 2
    assert "torchrun" in capsys.readouterr().err
