"""Size numpy's BLAS thread pool (host attention) so it does not fight onnxruntime for the cores.

Host attention runs between ORT calls. OpenBLAS's own pool busy-waits, and on a 2-core board
with ORT's threads (or anything else) running, one batched matmul measured 15x slower with two
BLAS threads than with one. The pool size is process-wide; this sets it the way threadpoolctl
does (the OpenBLAS that numpy loaded, found in the process's memory map), without a dependency.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

_SETTERS = (
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
)


@lru_cache(maxsize=1)
def _openblas_libs() -> tuple[str, ...]:
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:  # not Linux: leave the pool as it is
        return ()
    return tuple(sorted(p for p in paths if p.startswith("/") and ".so" in p))


def limit_blas_threads(n: int) -> bool:
    """Set numpy's OpenBLAS pool to n threads; False if no OpenBLAS was found (nothing changed)."""
    done = False
    for path in _openblas_libs():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                fn(int(n))
                done = True
                break
    return done
