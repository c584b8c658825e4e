"""What checking results costs: the same tasks with the front-end's checks on and off.

Two local nodes × 1 slot over real SSH; alternating runs, --repeat each, medians:
  W1  invert 1,500 of 384×384, norms, 25 per chunk (checked by recomputing a sample)
  W3  det of 50,000 8×8, full results, 10 per chunk (recomputing a sample; dispatch-bound)
  F   invert 1,000 of 256×256, full results, 25 per chunk (Freivalds on every item)

    python tests/benchmarks/bench_checking.py [--scale 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from console.engine.host import Host  # noqa: E402
from console.ssh.server import ServerSettings  # noqa: E402
from console.engine.statedir import StateDir  # noqa: E402
from protocol.taskfile import parse_task  # noqa: E402

WORKLOADS = {  # return mode, items, n, operation, items per chunk
    "W1": ("norms", 1500, 384, "invert", 25),
    "W3": ("full", 50_000, 8, "det", 10),
    "F": ("full", 1000, 256, "invert", 25),
}


async def _one(workload: str, checked: bool, scale: float, seed: int) -> float:
    mode, count, n, operation, chunk = WORKLOADS[workload]
    options = {} if checked else {"verify_sample": 0}
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(StateDir(Path(tmp) / "state"), ServerSettings(port=0), local_nodes=2, frontend_options=options)
        await host.start()
        try:
            while len(host.frontend.node_rows()) < 2:
                await asyncio.sleep(0.05)
            document = {"name": workload, "operation": operation, "chunk_size": chunk, "return": mode,
                        "inputs": {"a": {"generate": {"count": max(50, int(count * scale)), "shape": [n, n],
                                                      "seed": seed}}}}
            began = time.perf_counter()
            summary = await host.frontend.wait(await host.frontend.submit(parse_task(document), "operator"))
            assert summary["state"] == "done", summary
            return time.perf_counter() - began
        finally:
            await host.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for workload in WORKLOADS:
        times: dict[bool, list[float]] = {True: [], False: []}
        for run in range(args.repeat):
            for checked in (False, True):
                times[checked].append(await _one(workload, checked, args.scale, 500 + run))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{workload}: unchecked {off:.2f} s, checked {on:.2f} s, ratio {on / off:.3f} "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
