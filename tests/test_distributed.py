"""torch.distributed: DistributedDataParallel (gloo, 2 processes started by torchrun) over rnnext models gives
the parameters of one process training on the same global batches; `rnnext train ... --distributed` runs."""

import os
import subprocess
import sys
import textwrap

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


def test_process_group_destroyed_before_the_interpreter_finalizes(tmp_path):
    """The cause of the rare abort at exit under torch 2.14.1 ("terminate called without an active exception"):
    a gloo group still alive when the interpreter finalizes has its worker thread take the GIL then, and CPython
    ends it with pthread_exit, which terminates the process. init_from_env registers an exit hook that destroys
    the group first, so a worker that never reaches shutdown (an exception, sys.exit) leaves cleanly too. A hook
    registered before it runs after it (atexit is last in, first out) and sees the group gone."""
    code = textwrap.dedent("""
        import atexit, os, sys
        import torch, torch.distributed as dist
        atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
        import rnnext.distributed as D
        ctx = D.init_from_env("cpu")
        t = torch.ones(3)
        dist.all_reduce(t)
        sys.exit(3)  # no shutdown
    """)
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "initialized at exit: False" in out.stdout, out.stdout + out.stderr[-2000:]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
