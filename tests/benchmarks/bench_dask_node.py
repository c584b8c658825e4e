"""One node on worker processes against one node on a Dask cluster with the same threads.

Runs, alternately and --repeat times each, a task (invert, norms, chunk size "auto") on a
front-end with one node:
  processes: chainconsole node --slots 2                     (two worker processes)
  dask:      chainconsole node --executor dask --scheduler …  (a LocalCluster, 2 workers × 1 thread)
and prints each round's wall times and the ratio dask / processes.

    python tests/benchmarks/bench_dask_node.py [--items 1500] [--n 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import distributed  # noqa: E402

from console.engine.host import Host  # noqa: E402
from console.engine.keys import initialize  # noqa: E402
from console.engine.statedir import StateDir  # noqa: E402
from console.ssh.server import ServerSettings  # noqa: E402
from protocol.taskfile import parse_task  # noqa: E402

WORKERS = 2


async def run_once(document: dict, node_options: list[str], name: str) -> float:
    """Seconds from submitting ``document`` until it is done, on a fresh front-end with one node."""
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        state = StateDir(Path(tmp) / "state")
        initialize(state)
        host = Host(state, ServerSettings(port=0))
        address = await host.start()
        try:
            cmd = [sys.executable, "-m", "nodes", "--connect", f"{address[0]}:{address[1]}", "--name", name,
                   "--key", str(state.node_key), "--host-key", str(state.host_key_pub),
                   "--state-dir", str(state.root), *node_options]
            host.nodes.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            while not any(n.name == name and n.state == "idle" for n in host.frontend.node_rows()):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # worker processes warm
            began = time.perf_counter()
            task_id = await host.frontend.submit(parse_task(document), "operator")
            summary = await host.frontend.wait(task_id)
            wall = time.perf_counter() - began
            assert summary["ok_items"] == summary["items"], summary
            return wall
        finally:
            await host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--n", type=int, default=256, help="matrix size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    document = {"name": "bench-dask", "operation": "invert", "return": "norms",
                "inputs": {"a": {"generate": {"count": args.items, "shape": [args.n, args.n], "seed": 1}}}}
    cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        for round_ in range(args.repeat):
            pool = asyncio.run(run_once(document, ["--slots", str(WORKERS)], "processes"))
            dask = asyncio.run(run_once(document, ["--executor", "dask", "--scheduler", cluster.scheduler_address],
                                        "dask"))
            print(f"round {round_ + 1}: processes {pool:.2f} s, dask {dask:.2f} s, ratio {dask / pool:.2f}",
                  flush=True)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
