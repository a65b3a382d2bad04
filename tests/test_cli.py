"""The `rnnext` command: every subcommand on a tiny budget, and its one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from rnnext.cli import main


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("chars")
    text = d / "corpus.txt"
    text.write_text("def f(x):\n    return x + 1\n\n" * 200)
    ckpt = d / "chars.pt"
    assert run_cli("train", "chars", "--text", text, "--max-steps", 3, "--hidden", 16, "--seq-len", 32,
                   "--batch-size", 4, "--eval-every", 0.01, "--out", ckpt, "--no-progress") == 0
    return ckpt


def test_train_chars_writes_checkpoint_and_results(char_checkpoint):
    res = json.loads(open(str(char_checkpoint) + ".json").read())
    assert res["steps"] == 3 and res["val_loss"] > 0 and res["unigram_entropy"] > 0
    assert res["sample"].startswith("def ")


def test_train_chars_resumes(char_checkpoint, tmp_path):
    out = tmp_path / "more.pt"
    assert run_cli("train", "chars", "--text", tmp_path / ".." / "corpus.txt", "--max-steps", 1) == 2  # no such file
    text = tmp_path / "c.txt"
    text.write_text("def f(x):\n    return x + 1\n\n" * 200)
    assert run_cli("train", "chars", "--text", text, "--resume", char_checkpoint, "--max-steps", 5, "--hidden", 16,
                   "--seq-len", 32, "--batch-size", 4, "--out", out, "--no-progress") == 0
    assert json.loads(open(str(out) + ".json").read())["steps"] == 5


def test_generate(char_checkpoint, capsys):
    assert run_cli("generate", char_checkpoint, "--prime", "def ", "--steps", 20, "--temperature", 0.5,
                   "--seed", 1) == 0
    first = capsys.readouterr().out
    assert first.startswith("def ") and len(first.rstrip("\n")) >= 4
    assert run_cli("generate", char_checkpoint, "--prime", "def ", "--steps", 20, "--temperature", 0.5,
                   "--seed", 1) == 0
    assert capsys.readouterr().out == first  # a seed fixes the output
    assert run_cli("generate", char_checkpoint, "--prime", "ret", "--steps", 5, "--temperature", 0) == 0


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_train_and_generate_gru_and_rnn_chars(tmp_path, capsys, cell):
    text = tmp_path / "c.txt"
    text.write_text("def f(x):\n    return x + 1\n\n" * 200)
    ckpt = tmp_path / f"{cell}.pt"
    assert run_cli("train", "chars", "--cell", cell, "--text", text, "--max-steps", 3, "--hidden", 16, "--seq-len",
                   32, "--batch-size", 4, "--out", ckpt, "--no-progress") == 0
    assert torch.load(ckpt, weights_only=True)["config"]["cell"] == cell
    capsys.readouterr()
    assert run_cli("generate", ckpt, "--prime", "def ", "--steps", 12, "--temperature", 0.7, "--seed", 2) == 0
    assert capsys.readouterr().out.startswith("def ")
    # Resuming with another cell says which one the checkpoint holds.
    assert run_cli("train", "chars", "--text", text, "--resume", ckpt, "--max-steps", 4, "--hidden", 16,
                   "--no-progress") == 2
    assert f"the checkpoint's model has --cell {cell}, the command line --cell lstm; resume with --cell {cell}" \
        in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--prime", "def ", "--temperature", -1], "--temperature must be >= 0"),
    (["--prime", "Ωdef"], "lacks: 'Ω'"),
])
def test_generate_errors(char_checkpoint, capsys, args, message):
    assert run_cli("generate", char_checkpoint, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_generate_bad_checkpoints(tmp_path, capsys):
    assert run_cli("generate", tmp_path / "missing.pt") == 2
    assert "no such checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert run_cli("generate", junk) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_train_listops_tiny(tmp_path):
    test = tmp_path / "test.tsv"
    test.write_text("7\t( ( ( [MAX 2 ) 9 ) ] )\n1\t( ( ( [MIN 1 ) 9 ) ] )\n")
    for model in ("spinn", "lstm"):
        out = tmp_path / f"{model}.pt"
        assert run_cli("train", "listops", "--model", model, "--max-steps", 3, "--train-size", 300, "--dev-size", 20,
                       "--max-length", 30, "--test", test, "--out", out, "--no-progress") == 0
        res = json.loads(open(str(out) + ".json").read())
        assert res["steps"] == 3 and res["test_examples"] == 2 and 0 <= res["test_accuracy"] <= 1
    assert run_cli("train", "listops", "--resume", tmp_path / "spinn.pt", "--max-steps", 4, "--train-size", 300,
                   "--dev-size", 20, "--max-length", 30, "--test", test, "--no-progress") == 0


def test_bench_one_suite_json_and_plot(tmp_path):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    assert run_cli("bench", "--only", "packed", "--rounds", 1, "--json", out, "--plot", plot) == 0
    res = json.loads(out.read_text())
    rows = res["suites"]["Packed sequences"]["rows"]
    assert len(rows) == 2 and all(r["speedup"] > 0 for r in rows)
    assert plot.stat().st_size > 1000


def test_python_dash_m_entry_point(tmp_path):
    # Run outside the checkout: `python -m` puts the working directory first on sys.path, and the
    # source tree's rnnext/ (without the compiled library) would shadow the installed package.
    out = subprocess.run([sys.executable, "-m", "rnnext", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "bench" in out.stdout and "generate" in out.stdout


def test_bench_listops_training_suite(tmp_path):
    out = tmp_path / "b.json"
    assert run_cli("bench", "--only", "listops", "--quick", "--json", out) == 0
    row = json.loads(out.read_text())["suites"]["ListOps training"]["rows"][0]
    assert row["extra"]["rnnext_examples_per_s"] > 0 and row["speedup"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_bench_device_cuda_without_gpu_is_a_clear_error(capsys):
    assert run_cli("bench", "--only", "packed", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA device" in err


def test_benchmark_suites_run_on_an_explicit_cpu_device():
    from rnnext.benchmarks import packing
    res = packing.run(rounds=1, quick=True, device=torch.device("cpu"))
    assert res["config"]["device"] == "cpu" and len(res["rows"]) == 2


def test_import_rnnext_exposes_subpackages(tmp_path):
    """`import rnnext` alone gives rnnext.models, rnnext.data and rnnext.utils (a fresh interpreter, run outside
    the checkout so that the source tree does not shadow the installed package)."""
    code = "import rnnext; print(rnnext.models.SPINNClassifier.__name__, rnnext.data.listops.VOCAB_SIZE > 0, " \
           "rnnext.utils.rnn.pack_padded_sequence.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.split()
    assert out == ["SPINNClassifier", "True", "pack_padded_sequence"]


@pytest.mark.parametrize("argv,message", [
    (["train", "listops", "--test", "no/such/test.tsv"], "--test no/such/test.tsv: no such file"),
    (["train", "listops", "--out", "no/such/folder/ckpt.pt"], "folder"),
    (["train", "chars", "--out", "no/such/folder/ckpt.pt"], "folder"),
    (["train", "listops", "--dtype", "float32", "--max-steps", "1", "--resume", "missing.pt"], "--resume missing.pt: no such checkpoint"),
])
def test_paths_are_checked_before_training(argv, message, capsys, monkeypatch):
    """A mistyped path fails at once with a one-line error, before data generation and training."""
    import rnnext.train as T

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(T, "train_listops", never)
    monkeypatch.setattr(T, "train_chars", never)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_help_shows_every_default():
    """Every option of every subcommand says its default in --help."""
    import argparse

    from rnnext.cli import build_parser

    def parsers(p):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    yield from parsers(sub)

    checked = 0
    for p in parsers(build_parser()):
        help_text = " ".join(p.format_help().split())
        for a in p._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction):
                continue
            text = " ".join(p._get_formatter()._expand_help(a).split()) if a.help else ""
            assert "default" in text, f"{p.prog} {a.option_strings[0]}: no default in its help"
            assert text in help_text
            checked += 1
    assert checked >= 40, checked


@pytest.mark.parametrize("key,value,message", [("hidden", 40000, "config says hidden 40000 but the weights have hidden 16"),
                                               ("layers", 7, "config says layers 7"),
                                               ("hidden", -3, "hidden must be a positive integer")])
def test_generate_checks_checkpoint_sizes_before_building(char_checkpoint, tmp_path, capsys, key, value, message):
    """A checkpoint whose config claims sizes its weights do not have (a few KB claiming a 40000-wide model) is
    a one-line error before anything is allocated."""
    ckpt = torch.load(char_checkpoint, weights_only=True)
    ckpt["config"][key] = value
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    assert main(["generate", str(bad), "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_train_chars_text_reads_at_most_max_chars(tmp_path):
    """--max-chars bounds what is read of --text: a larger file is not read whole."""
    from rnnext.train import CharsConfig, train_chars

    text = tmp_path / "big.txt"
    text.write_text("abcdefgh" * 5000 + "XYZ" * 1000)  # the tail's characters lie past max_chars
    sizes = [train_chars(CharsConfig(text=str(text), max_chars=n, max_steps=1, hidden=8, embed=8, layers=1,
                                     seq_len=16, batch_size=2), progress=False, log=lambda *a: None)["vocab_size"]
             for n in (2000, 10 ** 6)]
    assert sizes[1] == sizes[0] + 3  # X, Y and Z only when the tail is read


def test_bench_timer_warns_when_runs_disagree():
    """time_interleaved warns when a callable's repeated runs spread by more than 20% (interquartile range over
    the median), and not for a steady one."""
    import time
    import warnings

    from rnnext.benchmarks.timing import relative_spread, time_interleaved

    assert relative_spread([1.0, 1.0, 1.0, 1.0, 1.0]) == 0.0
    assert relative_spread([1.0, 2.0, 1.0, 2.0, 1.0, 2.0]) > 0.5
    calls = iter(range(10 ** 6))

    def uneven():
        time.sleep(0.002 if next(calls) % 2 else 0.006)

    with pytest.warns(RuntimeWarning, match="'uneven': its 8 timed runs disagree"):
        time_interleaved({"uneven": uneven}, rounds=8, warmup=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        time_interleaved({"steady": lambda: None}, rounds=1, warmup=0)  # too few runs to judge: no warning


def test_listops_data_is_cached_between_runs(tmp_path, monkeypatch):
    """The generated ListOps data is cached (int tensors, weights_only) and reused by the next run with the same
    seed and sizes; the cached examples are the generated ones; --no-data-cache (data_cache=False) bypasses it."""
    from rnnext.data import listops as L
    from rnnext.train import ListOpsConfig, _listops_data

    monkeypatch.setenv("RNNEXT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = ListOpsConfig(train_size=300, dev_size=40, max_length=30, seed=3)
    logs = []
    dev1, train1, cached1 = _listops_data(cfg, False, logs.append)
    dev2, train2, cached2 = _listops_data(cfg, False, logs.append)
    assert (cached1, cached2) == (False, True)
    assert dev1 == dev2 and train1 == train2
    assert train1 == L.generate_listops(300, seed=5, max_length=30, exclude={tuple(e.tokens) for e in dev1})
    (cache_file,) = list((tmp_path / "cache").iterdir())
    cache_file.write_bytes(b"not a checkpoint")  # an unreadable cache is regenerated, with a note
    dev3, train3, cached3 = _listops_data(cfg, False, logs.append)
    assert not cached3 and train3 == train1 and any("unreadable data cache" in m for m in logs)
    _, _, cached4 = _listops_data(ListOpsConfig(train_size=300, dev_size=40, max_length=30, seed=3,
                                                data_cache=False), False, logs.append)
    assert not cached4


def test_generate_streams_in_pieces(char_checkpoint, capsys, monkeypatch):
    """rnnext generate draws --steps in pieces of bounded size (here 5 steps) and prints them as they come: the
    greedy output equals one whole generate call's."""
    import rnnext.cli as cli
    from rnnext.models import CharGenerator

    sizes = []
    sample = CharGenerator._sample

    def spy(self, last, state, steps, *a):
        sizes.append(steps)
        return sample(self, last, state, steps, *a)

    assert run_cli("generate", char_checkpoint, "--prime", "def ", "--steps", 23, "--temperature", 0) == 0
    whole = capsys.readouterr().out
    monkeypatch.setattr(cli, "_GENERATE_CHUNK", 5)
    monkeypatch.setattr(CharGenerator, "_sample", spy)
    assert run_cli("generate", char_checkpoint, "--prime", "def ", "--steps", 23, "--temperature", 0) == 0
    assert sizes == [5, 5, 5, 5, 3]
    assert capsys.readouterr().out == whole and len(whole) == len("def ") + 23 + 1


def test_bench_progress_counts_rounds(monkeypatch):
    """The progress hook of rnnext bench: time_interleaved reports every warm-up and timed round inside
    round_callback, and nothing outside it; `bench --no-progress` runs a suite without a bar."""
    from rnnext.benchmarks.timing import round_callback, time_interleaved

    ticks = []
    with round_callback(lambda: ticks.append(1)):
        time_interleaved({"a": lambda: None, "b": lambda: None}, rounds=4, warmup=2)
    assert len(ticks) == 6
    time_interleaved({"a": lambda: None}, rounds=2, warmup=0)
    assert len(ticks) == 6
    assert run_cli("bench", "--only", "packed", "--rounds", 1, "--no-progress") == 0


def test_bench_quick_cells_suite_is_a_quarter_of_the_grid():
    """`rnnext bench --quick` stays short: the cells suite (the longest) runs float32 at two batch sizes."""
    from rnnext.benchmarks import cells

    res = cells.run(rounds=1, quick=True)
    assert len(res["rows"]) == 3 * 2 * 2 * 2 and res["config"]["steps"] == 100
    assert all("float32" in r.case for r in res["rows"])


@pytest.mark.parametrize("argv,message", [
    (["train", "listops", "--hidden", "0"], "argument --hidden: expected a positive integer, got 0"),
    (["train", "listops", "--batch-size", "-3"], "argument --batch-size: expected a positive integer, got -3"),
    (["train", "listops", "--lr", "-1"], "argument --lr: expected a positive finite number"),
    (["train", "listops", "--minutes", "0"], "argument --minutes: expected a positive finite number"),
    (["train", "listops", "--train-size", "ten"], "argument --train-size: expected a positive integer, got 'ten'"),
    (["train", "chars", "--seq-len", "0"], "argument --seq-len: expected a positive integer, got 0"),
    (["train", "chars", "--layers", "0"], "argument --layers: expected a positive integer, got 0"),
    (["bench", "--rounds", "0"], "argument --rounds: expected a positive integer, got 0"),
    (["generate", "x.pt", "--steps", "-1"], "argument --steps: expected an integer >= 0, got -1"),
    (["generate", "x.pt", "--top-k", "0"], "argument --top-k: expected a positive integer, got 0"),
])
def test_numbers_are_checked_when_the_command_line_is_read(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_paths_and_checkpoints_are_checked_before_long_work(tmp_path, capsys, monkeypatch):
    """--resume (a file that is not a checkpoint of the task), --max-length below the shortest expression and
    bench's --json/--plot folders fail in one line before any data, model or benchmark is made."""
    import rnnext.train

    def never(*a, **k):
        raise AssertionError("the long work started")

    monkeypatch.setattr(rnnext.train, "train_listops", never)
    monkeypatch.setattr(rnnext.train, "train_chars", never)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"task": "chars"}, other)
    cases = [
        (["train", "listops", "--resume", junk], "--resume", "not a checkpoint (torch.load"),
        (["train", "listops", "--resume", other], "--resume", "not a listops checkpoint"),
        (["train", "chars", "--resume", tmp_path / "missing.pt"], "--resume", "no such checkpoint"),
        (["train", "chars", "--text", tmp_path / "missing.txt"], "no such text file", ""),
        (["train", "listops", "--max-length", 2], "--max-length 2", "at least 3 tokens"),
        (["bench", "--json", tmp_path / "no" / "x.json"], "--json", "does not exist"),
        (["bench", "--plot", tmp_path / "no" / "x.png"], "--plot", "does not exist"),
    ]
    for argv, a, b in cases:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert a in err and b in err and err.count("\n") == 1, err


def test_hostile_command_lines_are_one_line_errors_before_any_work(char_checkpoint, tmp_path, capsys, monkeypatch):
    """What a hostile caller found ending in a traceback, or failing only after the training: an --out that is a
    directory or in a folder that takes no file, --device cuda where CUDA is unavailable, --resume with another
    --hidden, --minutes 1e308, a character checkpoint without its vocabulary. Each is a one-line error before
    any data is generated or step trained."""
    import os

    import rnnext.train

    listops_ckpt = tmp_path / "lo.pt"
    assert run_cli("train", "listops", "--model", "lstm", "--max-steps", 1, "--train-size", 60, "--dev-size", 10,
                   "--hidden", 16, "--max-length", 30, "--test", os.devnull, "--out", listops_ckpt,
                   "--no-progress") == 0
    capsys.readouterr()
    no_vocab = tmp_path / "novocab.pt"
    ck = torch.load(char_checkpoint, weights_only=True)
    del ck["vocab"]
    torch.save(ck, no_vocab)

    def never(*a, **k):
        raise AssertionError("the long work started")

    monkeypatch.setattr(rnnext.train, "train_listops", never)
    monkeypatch.setattr(rnnext.train, "train_chars", never)
    cases = [
        (["train", "listops", "--out", tmp_path], "is a directory"),
        (["train", "chars", "--out", tmp_path], "is a directory"),
        (["train", "listops", "--resume", listops_ckpt, "--model", "lstm", "--hidden", 32], "--hidden 16"),
        (["train", "listops", "--resume", listops_ckpt, "--hidden", 16], "--model lstm"),
        (["train", "chars", "--resume", char_checkpoint, "--hidden", 32, "--layers", 2], "--hidden 16"),
        (["train", "chars", "--resume", no_vocab, "--hidden", 16], "lacks its vocab"),
        (["generate", no_vocab], "lacks its vocab"),
        (["train", "listops", "--device", "nonsense"], "--device nonsense: not a device"),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", "listops", "--device", "cuda"], "--device cuda: CUDA is not available"))
        cases.append((["train", "chars", "--device", "cuda:0"], "--device cuda:0: CUDA is not available"))
    if os.path.isdir("/proc"):  # a folder that takes no new file, even for root
        cases.append((["train", "listops", "--out", "/proc/model.pt"], "cannot write in folder /proc"))
    for argv, message in cases:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit) as e:
        main(["train", "listops", "--minutes", "1e308"])
    assert e.value.code == 2 and "argument --minutes: expected at most" in capsys.readouterr().err


def test_generate_top_k_beyond_the_vocabulary_and_bad_step_counts(char_checkpoint, capsys):
    """--top-k 2**64 keeps every character (as any k at least the vocabulary does) instead of overflowing the op;
    generate(steps=True) is a ValueError naming steps, not a TypeError from inside torch.rand."""
    from rnnext.cli import _load_char_checkpoint

    assert run_cli("generate", char_checkpoint, "--steps", 10, "--top-k", 2**64, "--seed", 3) == 0
    huge = capsys.readouterr().out
    assert run_cli("generate", char_checkpoint, "--steps", 10, "--seed", 3) == 0
    assert capsys.readouterr().out == huge  # top-k >= the vocabulary changes nothing
    model, vocab = _load_char_checkpoint(str(char_checkpoint))
    prime = torch.tensor([vocab.encode("def ")])
    for bad in (True, 2.5, "3"):
        with pytest.raises(ValueError, match="steps must be a non-negative integer"):
            model.generate(prime, bad)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prime, 3, top_k=True)


@pytest.mark.parametrize("task", ["listops", "chars"])
def test_ctrl_c_saves_a_checkpoint_and_exits_130(task, tmp_path):
    """Ctrl-C during `rnnext train` stops after the running step, writes the checkpoint (which --resume
    continues) and exits with status 130 and one line, no traceback."""
    import os
    import signal
    import time

    out = tmp_path / "ckpt.pt"
    if task == "listops":
        args = ["train", "listops", "--model", "lstm", "--train-size", "400", "--dev-size", "10", "--hidden", "16",
                "--max-length", "30", "--test", os.devnull]
    else:
        text = tmp_path / "c.txt"
        text.write_text("def f(x):\n    return x + 1\n\n" * 200)
        args = ["train", "chars", "--text", str(text), "--hidden", "16", "--seq-len", "32", "--batch-size", "4"]
    args += ["--minutes", "10", "--eval-every", "1e9", "--out", str(out), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "rnnext", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        marker = "generated" if task == "listops" else "corpus:"
        line = proc.stdout.readline()
        while line and marker not in line:
            line = proc.stdout.readline()
        assert line, proc.stderr.read()
        time.sleep(3)  # some training steps
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert f"checkpoint written to {out}" in stdout, stdout
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["task"] == task and ckpt["state"]["step"] >= 1
