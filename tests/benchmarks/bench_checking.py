"""What checking results costs: the same tasks with the front-end's checks off, on without
replicas, and on with replicas (the default).

Two local nodes × 1 slot over real SSH; alternating runs, --repeat each, medians:
  W1  invert 1,500 of 384×384, norms, 25 per chunk (a recomputed sample, and replicas)
  W3  det of 50,000 8×8, full results, 10 per chunk (a recomputed sample, and replicas; dispatch-bound)
  F   invert 1,000 of 256×256, full results, 25 per chunk (Freivalds on every item; no replicas)

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
from protocol.replication import ReplicationPolicy  # noqa: E402
from protocol.taskfile import parse_task  # noqa: E402

CONFIGS = ("off", "checks", "checks+replicas")

WORKLOADS = {  # return mode, items, n, operation, items per chunk
    "W1": ("norms", 1500, 384, "invert", 25),
    "W3": ("full", 50_000, 8, "det", 10),
    "F": ("full", 1000, 256, "invert", 25),
}


async def _one(workload: str, config: str, scale: float, seed: int) -> float:
    mode, count, n, operation, chunk = WORKLOADS[workload]
    options = {"verify_sample": 0} if config == "off" else {}
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(StateDir(Path(tmp) / "state"), ServerSettings(port=0), local_nodes=2, frontend_options=options)
        await host.start()
        if config == "checks":
            host.frontend.hub.dispatcher.replication = ReplicationPolicy(probation=0, rate=0.0)
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
        times: dict[str, list[float]] = {config: [] for config in CONFIGS}
        for run in range(args.repeat):
            for config in CONFIGS:
                times[config].append(await _one(workload, config, args.scale, 500 + run))
        off, checks, replicas = (statistics.median(times[config]) for config in CONFIGS)
        print(f"{workload}: off {off:.2f} s, checks {checks:.2f} s ({checks / off:.3f}×), "
              f"checks+replicas {replicas:.2f} s ({replicas / off:.3f}×) (load {os.getloadavg()[0]:.1f})",
              flush=True)


if __name__ == "__main__":
    asyncio.run(main())
