"""Keep freed memory in the process (glibc ``mallopt``), so that large activations stop costing page faults.

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free. A CNN at inference
allocates and frees such blocks in every call (ResNet-50's first activation for 64 frames of 224x224 is 205 MB),
so each call page-faults its activations in again, in kernel time (a large share of a batch's time on a CPU;
docs/performance.md). It is what jemalloc/tcmalloc give PyTorch CPU inference; here without a dependency:
allocations come from the heap (``M_MMAP_MAX=0``) and the heap is never trimmed (``M_TRIM_THRESHOLD``), so after
the first call the same memory is reused. The price is a resident size that stays at its peak.

Training on a CPU pays the same toll (every step allocates and frees its activations): every stage run applies it
(``adafocus_pl.stages.runner.run_stage``); the measurements, inference and training, are in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
_applied = False


def keep_freed_memory() -> bool:
    """Apply the setting to this process (idempotent); False where it does not apply (not Linux/glibc)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError) as err:
        log.warning("could not tune glibc malloc (%s): large allocations keep page-faulting", err)
        return False
    _applied = ok
    return ok
