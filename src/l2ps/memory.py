"""Arrays that are written once and kept for a whole stage or job (the decoded bands, the
targets of eager warps such as the cube's QAI) on their own private anonymous mappings of
normal 4 KiB pages.

numpy asks the kernel for transparent huge pages (``madvise``) for every large array.
That pays for short-lived temporaries that reuse recently freed memory, but a huge page
touched for the first time after the kernel has had time to hand free memory back (a
virtual machine's host reclaiming it: free page reporting, ballooning) costs about 1–2 s
of system time per GB, against ~0.3 s per GB in 4 KiB pages (measured on the benchmark
machine: first touch of 1 GB after 5 s idle 1.14 s with huge pages, 0.31 s without;
reading a Sentinel-2 tile's 13 bands 3.7 → 1.5 CPU-s of sys time). Long-lived arrays
are touched once when they are filled, so they go on plain pages; everything else keeps
numpy's default.

The C heap's policy is here too: :func:`tune_heap` (freed heap reused within a stage) and
:func:`release_free_heap` (what a stage freed given back at its end)."""
from __future__ import annotations

import mmap

import numpy as np

#: below this size an array comes from numpy as usual
MIN_BYTES = 2**20


def lasting_zeros(shape, dtype) -> np.ndarray:
    """A zero-filled C-contiguous array; from :data:`MIN_BYTES` on, on its own private
    anonymous mapping (4 KiB pages, zero until written), freed with the array."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n < MIN_BYTES or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype).reshape(shape)


#: glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_heap(mmap_threshold: int = 8 * 2**20, trim_threshold: int = 512 * 2**20) -> bool:
    """Keep freed heap memory for reuse within a stage (glibc ``mallopt``; a no-op
    elsewhere): blocks below ``mmap_threshold`` (GDAL's tiles and compression buffers,
    strips, per-thread work arrays) come from the heap instead of fresh ``mmap`` pages, and
    up to ``trim_threshold`` of free heap is kept instead of returned at every ``free``.
    Each page the kernel hands out again is zeroed first: on a Sentinel-2 tile this saves
    ~1 CPU-s of page zeroing (sys time) for ~90 MB more at the full chain's peak (3320 ->
    3406 MiB; a trim threshold of 64 MB: 3377 MiB, but ~1 s more sys time on a Landsat
    scene). The stages still give everything free back at their end
    (:func:`release_free_heap`). Returns True if set."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) and
                    libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    except (OSError, AttributeError):
        return False


def release_free_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    GDAL's decoded JPEG 2000 tiles (a few MB each) live on the C heap; freed, they stay
    in the process's resident set (tens to ~100 MB after a Sentinel-2 tile) unless
    trimmed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
