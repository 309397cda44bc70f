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
numpy's default."""
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
