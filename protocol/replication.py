"""When a result of a replicated task waits for a second computation before it is stored.

``det`` results and the ``norms`` of ``invert``, ``solve`` and ``matmul`` have no check
cheaper than computing them again (``protocol.verify.replicated``). The Dispatcher holds
such a result until a second node's result for the chunk confirms it; this policy says
which results are held: every one of a node on probation, a random share of the others.
The draw happens when the result arrives, so a node cannot tell which of its results are.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

DEFAULT_PROBATION = 5
"""Confirmed results a node needs, after joining or after an invalid result, before only a sample is replicated."""
DEFAULT_REPLICA_RATE = 0.1
"""Share of a proven node's results that a second computation confirms."""


class OsDraws:
    """Uniform draws in [0, 1) from the operating system's randomness: no seed to guess, and no
    share in the ``random`` module's generator, which other code may seed or draw from.

    The bytes are read ``block`` draws at a time. One system call per draw, as
    ``random.SystemRandom`` makes, took 13 µs on average inside a busy front-end (0.7 µs
    alone): a twentieth of the front-end's CPU per W3 result.
    """

    def __init__(self, block: int = 512) -> None:
        self.block = block
        self._words: Iterator[int] = iter(())
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)  # a child draws bytes of its own

    def _forget(self) -> None:
        self._words = iter(())
        self._lock = threading.Lock()  # another thread may have held it at the fork

    def __call__(self) -> float:
        with self._lock:
            word = next(self._words, None)
            if word is None:
                self._words = iter(memoryview(os.urandom(8 * self.block)).cast("Q"))
                word = next(self._words)
        return (word >> 11) * 2.0**-53  # the top 53 bits: every double in [0, 1) a multiple of 2⁻⁵³


_DRAWS = OsDraws()


@dataclass(frozen=True)
class ReplicationPolicy:
    """Which results of replicated tasks are held for a second computation."""

    probation: int = DEFAULT_PROBATION
    rate: float = DEFAULT_REPLICA_RATE
    chance: Callable[[], float] = field(default=_DRAWS, compare=False)
    """Uniform draws in [0, 1); tests pass their own."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"the replica rate is a share between 0 and 1, got {self.rate!r}")
        if self.probation < 0:
            raise ValueError(f"probation is a count of results, got {self.probation!r}")

    @classmethod
    def of_share(cls, share: float) -> ReplicationPolicy:
        """What ``--replicate SHARE`` asks for: probation, then ``share``; 0 turns replication off."""
        return cls(probation=DEFAULT_PROBATION if share > 0 else 0, rate=share)

    def wanted(self, proven: int) -> bool:
        """Whether a result of a node with ``proven`` confirmed results is held."""
        return proven < self.probation or self.chance() < self.rate
