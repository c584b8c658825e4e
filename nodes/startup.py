"""What a command's process costs to start and to end, kept small: every local node and
``chainconsole run`` start several Python processes on cores that the work needs.

- **BLAS threads.** OpenBLAS starts one thread per core when numpy is imported, and an
  idle OpenBLAS thread spins for a while before it sleeps: about 0.07 CPU-seconds in
  every process that imports numpy with the default. threadpoolctl limits the threads
  afterwards; the environment, set before numpy loads, keeps them from starting at all.
- **Garbage collection while loading.** Start-up creates the modules, classes and
  schemas that live as long as the process; searching them for garbage again and again
  as they pile up is 10–20% of the import time (0.05–0.1 CPU-s). The collector waits
  until start-up is over, and then leaves what start-up made alone (``gc.freeze``).
- **Exit.** At exit the collector would search all of them once more (0.05–0.1 CPU-s);
  freezing them first skips that. Every ``atexit`` handler and ``finally`` still runs.
"""

from __future__ import annotations

import gc
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


def loading() -> None:
    """Start-up begins: no garbage collection until ``loaded()``."""
    gc.disable()


def loaded() -> None:
    """Start-up is over: garbage collection as usual, for the objects made from now on.

    What start-up made is frozen first: it lives as long as the process, and the first
    collection after a paused start-up would otherwise search all of it at once.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def quick_exit() -> None:
    """The command is done: let the interpreter end without a last search for garbage."""
    gc.freeze()
