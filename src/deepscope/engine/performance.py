"""Make PyTorch fast on the user's machine without them having to know how.

- glibc's malloc returns freed memory to the system after each large tensor, which
  costs PyTorch CPU training about half its speed in page faults. We tell glibc, at
  run time through ``mallopt``, to keep freed memory (the same effect as the
  ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` environment tunables).
- bfloat16 autocast is used on CPUs with native bf16 support (AVX512-BF16 / AMX), where
  it is about twice as fast as float32 for convolutions.
- Threads: one per available core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_TOP_PAD = -2


@lru_cache(maxsize=1)
def tune_allocator() -> str:
    """Stop glibc from handing memory back to the OS after every tensor.

    Returns a short description of what was done (recorded in run logs). Does nothing
    when another allocator (tcmalloc, jemalloc) is preloaded or libc is not glibc.
    """
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload or "jemalloc" in preload:
        return f"allocator from LD_PRELOAD ({os.path.basename(preload.split(':')[0])})"
    name = ctypes.util.find_library("c")
    if not name:
        return "default allocator (libc not found)"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default allocator (not glibc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, 2**30),
            (_M_TOP_PAD, 256 * 2**20),
        )
    )
    return "glibc malloc tuned (no mmap, no trim)" if ok else "glibc mallopt refused"


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def available_cores() -> int:
    """Cores this process may use (respects CPU affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def choose_accelerator() -> str:
    """'gpu' when CUDA is available, else 'cpu'."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def choose_precision(requested: str, accelerator: str) -> str:
    """Map the config's precision ('auto', '32', 'bf16') to a Lightning precision string."""
    if requested == "32":
        return "32-true"
    if requested == "bf16":
        return "bf16-mixed"
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def setup_threads(processes: int = 1) -> int:
    """Use one intra-op thread per available core (or ``DEEPSCOPE_NUM_THREADS``).

    ``processes`` training processes on this computer share its cores.
    """
    n = int(os.environ.get("DEEPSCOPE_NUM_THREADS", 0)) or max(
        1, available_cores() // max(1, processes)
    )
    torch.set_num_threads(n)
    return n
