# Builds the rnnext op library (rnnext/_C.abi3.so) from csrc/: the C++ sources always, the CUDA
# sources when the build's torch has CUDA and nvcc is found.
import glob
import os
import platform
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _cuda_home_from_nvcc():
    """The toolkit root behind the nvcc on PATH, following wrapper scripts that exec the real nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    with open(nvcc, "rb") as f:
        head = f.read(4)
    if head != b"\x7fELF":  # a wrapper script: find the real nvcc path it names
        with open(nvcc, encoding="utf-8", errors="replace") as f:
            for token in f.read().replace('"', " ").replace("'", " ").split():
                if token.endswith("/bin/nvcc") and os.path.exists(token):
                    nvcc = os.path.realpath(token)
                    break
            else:
                return None
    return os.path.dirname(os.path.dirname(nvcc))


def _want_cuda():
    if os.environ.get("RNNEXT_NO_CUDA") == "1" or torch.version.cuda is None:
        return False
    if not os.environ.get("CUDA_HOME"):
        home = _cuda_home_from_nvcc()
        if home is None:
            return False
        os.environ["CUDA_HOME"] = home
        # cpp_extension reads CUDA_HOME at import time; refresh its copy.
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = home
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # torch's arch detection raises IndexError when no GPU is visible.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return True


def _pip_nvidia_includes():
    out = []
    for p in sys.path:
        out += glob.glob(os.path.join(p, "nvidia", "cu*", "include"))
        out += glob.glob(os.path.join(p, "nvidia", "*", "include"))
    return sorted(set(out))


def _write_build_info(with_cuda):
    with open(os.path.join(ROOT, "rnnext", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")


def extensions():
    with_cuda = _want_cuda()
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp")) + sorted(glob.glob("csrc/autograd/*.cpp"))
    # -fno-trapping-math and -fno-math-errno (as torch itself builds) let the activation loops vectorize.
    # RNNEXT_OPT=-O1: a quicker build at a lower optimization level (CI's compile checks use it).
    opt = os.environ.get("RNNEXT_OPT", "-O3")
    if opt not in ("-O0", "-O1", "-O2", "-O3"):
        raise ValueError(f"RNNEXT_OPT must be one of -O0, -O1, -O2, -O3, got {opt!r}")
    cxx = [opt, "-g0", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    link = ["-fopenmp"]
    if os.environ.get("RNNEXT_SANITIZE") == "1":  # ASan + UBSan build (see README, "Sanitizers")
        cxx += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
        link += ["-fsanitize=address,undefined"]
    # Per-function ISA clones need ifunc (x86-64 Linux with glibc); elsewhere, or with RNNEXT_NO_IFUNC=1 (to test
    # that configuration), the baseline code alone is compiled (csrc/cpu/isa.h).
    if os.environ.get("RNNEXT_NO_IFUNC") == "1" or not (sys.platform.startswith("linux") and
                                                         platform.machine() in ("x86_64", "AMD64")):
        cxx.append("-DRNNEXT_NO_IFUNC")
    include_dirs = [os.path.join(ROOT, "csrc")]
    _write_build_info(with_cuda)
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += _pip_nvidia_includes()
        return [
            CUDAExtension(
                "rnnext._C",
                sources,
                include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx + ["-DRNNEXT_WITH_CUDA"], "nvcc": [opt, "-DRNNEXT_WITH_CUDA", "--expt-relaxed-constexpr"]},
                extra_link_args=link,
                py_limited_api=True,
            )
        ]
    return [
        CppExtension(
            "rnnext._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            py_limited_api=True,
        )
    ]


def install_requires():
    """The torch this build compiles against, pinned (its public version: 2.13.0 matches 2.13.0+cpu), so that
    `pip install .` alone cannot pair the extension with another torch."""
    return [f"torch=={torch.__version__.split('+', 1)[0]}", "numpy", "tqdm"]


setup(
    install_requires=install_requires(),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
