"""How many threads numpy's BLAS starts with, set before numpy loads.

OpenBLAS starts one thread per core when numpy is imported, and an idle OpenBLAS
thread spins for a while before it sleeps: about 0.07 CPU-seconds in every process that
imports numpy with the default, on a machine whose cores the workers need. threadpoolctl
limits the threads afterwards; the environment keeps the extra ones from starting at all.
"""

from __future__ import annotations

import os
import sys

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def start_blas_with(threads: int) -> bool:
    """Have numpy's BLAS start with ``threads`` threads in this process; False if numpy is loaded already.

    Child processes inherit the setting; a worker sets its own before it loads numpy.
    """
    if "numpy" in sys.modules:
        return False
    for name in BLAS_THREAD_VARIABLES:
        os.environ[name] = str(threads)
    return True
