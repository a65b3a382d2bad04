"""Timing helpers shared by every rnnext benchmark: interleaved runs and medians, GEMM rooflines, and the
bytes an autograd graph keeps for its backward."""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Union

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """The benchmark device, checked: `--device cuda` on a machine without a usable GPU is a clear error."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        if not torch._C._dispatch_has_kernel_for_dispatch_key("rnnext::lstm_layer", "CUDA"):
            raise ValueError("--device cuda: this rnnext build has no CUDA kernels; rebuild it with a CUDA torch "
                               "and nvcc (see the README's CUDA section)")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(dev)!r}")
    return dev


_on_round: Optional[Callable[[], None]] = None  # called after every timed (or warm-up) round: progress bars


@contextlib.contextmanager
def round_callback(fn: Optional[Callable[[], None]]):
    """Within the block, `fn()` runs after every round of every time_interleaved call (rnnext bench's progress
    bar)."""
    global _on_round
    old, _on_round = _on_round, fn
    try:
        yield
    finally:
        _on_round = old


def time_interleaved(fns: Dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 3,
                     device: Union[str, torch.device, None] = None) -> Dict[str, float]:
    """Median wall time (ms) of each callable, the callables alternating within every round so that the
    machine's drift and noise hit all of them alike. On a CUDA device every call is bracketed by
    synchronizations, so that the time covers the kernels it launched."""
    cuda = torch.device(device or "cpu").type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
        if _on_round is not None:
            _on_round()
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            sync()
            t0 = time.perf_counter()
            fns[n]()
            sync()
            samples[n].append((time.perf_counter() - t0) * 1e3)
        if _on_round is not None:
            _on_round()
    for n, v in samples.items():
        spread = relative_spread(v)
        if spread > NOISY_SPREAD:
            warnings.warn(f"benchmark {n!r}: its {len(v)} timed runs disagree by {spread:.0%} (interquartile range "
                          f"over the median, {statistics.median(v):.3g} ms); the machine is noisy, so read this "
                          "median with care or rerun", RuntimeWarning, stacklevel=2)
    return {n: statistics.median(v) for n, v in samples.items()}


NOISY_SPREAD = 0.20  # time_interleaved warns above this relative spread of a callable's runs


def relative_spread(times: List[float]) -> float:
    """(75th percentile - 25th percentile) / median of a list of times; 0 for fewer than 4."""
    if len(times) < 4:
        return 0.0
    q1, med, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / med if med > 0 else 0.0


@dataclass
class Row:
    """One benchmark case: stock and rnnext medians, their ratio, and the GEMM roofline."""

    case: str
    stock_ms: float
    rnnext_ms: float
    gemm_ms: Optional[float] = None  # the unavoidable GEMMs' FLOPs at the machine's GEMM rate (GemmProbe)
    gflop: Optional[float] = None
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.stock_ms / self.rnnext_ms

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["speedup"] = self.speedup
        if self.gemm_ms is not None:
            d["roofline_share_rnnext"] = self.gemm_ms / self.rnnext_ms
            d["roofline_share_stock"] = self.gemm_ms / self.stock_ms
        return d


class GemmProbe:
    """A square torch.mm (float32, or the dtype given) to time alongside a benchmark's two sides (same rounds, same
    machine noise): its rate is the GEMM roofline the case is compared against. On a GPU the matrices are larger
    (4096), so that the probe is not launch-bound."""

    def __init__(self, n: Optional[int] = None, device: Union[str, torch.device, None] = None,
                 dtype: torch.dtype = torch.float32):
        device = torch.device(device or "cpu")
        n = n or (4096 if device.type == "cuda" else 1024)
        self.a = torch.randn(n, n, device=device).to(dtype)
        self.b = torch.randn(n, n, device=device).to(dtype)
        self.c = torch.empty(n, n, device=device, dtype=dtype)
        self.gflop = 2 * n**3 / 1e9

    def __call__(self):
        torch.mm(self.a, self.b, out=self.c)

    def roofline_ms(self, gflop: float, probe_ms: float) -> float:
        """Time of `gflop` of GEMM work at the probe's rate."""
        return gflop / (self.gflop / probe_ms)


class RooflineTimer:
    """Times a case's sides interleaved with a GemmProbe (time_interleaved) and returns their medians and the
    case's roofline time; keeps every probe rate for the suite's median GEMM rate."""

    def __init__(self, rounds: int, device: torch.device, dtype: torch.dtype = torch.float32):
        self.rounds, self.device = rounds, device
        self.probe = GemmProbe(device=device, dtype=dtype)
        self.rates: List[float] = []

    def __call__(self, fns: Dict[str, Callable[[], object]], gflop: float):
        t = time_interleaved({**fns, "gemm": self.probe}, self.rounds, device=self.device)
        self.rates.append(self.probe.gflop / t["gemm"] * 1e3)
        return t, self.probe.roofline_ms(gflop, t["gemm"])

    def median_rate(self) -> float:
        return sorted(self.rates)[len(self.rates) // 2]


def packed_batch(x: torch.Tensor, min_len: int, seed: int = 1):
    """The packed cases' input: x (T, B, F) packed with lengths uniform in [min_len, T] (the first one T), built
    once, outside the timing; its data a leaf that requires grad. Returns (packed, lengths)."""
    T, B = x.shape[0], x.shape[1]
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    lengths[0] = T
    p = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    return PackedSequence(p.data.clone().requires_grad_(), p.batch_sizes, p.sorted_indices, p.unsorted_indices), lengths


def forward_backward(module, x) -> Callable[[], None]:
    """A closure: module(x) (a tensor or a PackedSequence) and the backward of its output's sum."""
    def f():
        y, _ = module(x)
        (y.data if isinstance(y, PackedSequence) else y).sum().backward()
    return f


def inference(module, x) -> Callable[[], None]:
    """A closure: module(x) without autograd."""
    def f():
        with torch.no_grad():
            module(x)
    return f


def cell_loop(cell, x, state) -> Callable[[], None]:
    """A closure: the cell over x.unbind(0) from state() (fresh zeros per call), forward and backward of the
    sum of every step's h (unbind: one backward node for all steps; x[step] would zero-fill a full-size
    gradient per step)."""
    def f():
        s = state()
        total = 0
        for x_t in x.unbind(0):
            s = cell(x_t, s)
            total = total + (s[0] if isinstance(s, tuple) else s).sum()
        total.backward()
    return f


def format_table(rows: List[Row], title: str = "") -> str:
    w = max([38] + [len(r.case) for r in rows])
    head = (f"{'case':<{w}} {'stock ms':>9} {'rnnext ms':>9} {'speedup':>8} {'GEMM ms':>8} {'GEMM/stock':>10} "
            f"{'GEMM/rnnext':>11}")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        if r.gemm_ms is not None:
            g = f"{r.gemm_ms:8.2f} {r.gemm_ms / r.stock_ms:10.0%} {r.gemm_ms / r.rnnext_ms:11.0%}"
        else:
            g = f"{'-':>8} {'-':>10} {'-':>11}"
        lines.append(f"{r.case:<{w}} {r.stock_ms:9.2f} {r.rnnext_ms:9.2f} {r.speedup:7.2f}x {g}")
    return "\n".join(lines)


def machine_description(device: Union[str, torch.device, None] = None) -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in info:
                    info[key] = value.strip()
                if key == "flags":
                    break
    except OSError:
        pass
    if "model name" in info:
        cpu = info["model name"]
        if "cpu family" in info and "model" in info:  # (the brand string alone does not tell EPYC generations apart)
            cpu += f" (family {info['cpu family']} model {info['model']}"
            flags = set(info.get("flags", "").split())
            isa = ("AVX512-BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
                   else "AVX2" if "avx2" in flags else "no AVX2")
            cpu += f", {isa})"
    desc = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device is not None and torch.device(device).type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return desc


class SavedBytes:
    """Context manager that sums the bytes of the distinct tensors autograd saves for backward, leaving out
    the tensors given as `exclude` (inputs and parameters, which exist anyway)."""

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude if t is not None}
        self._seen = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)

    def _pack(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False
