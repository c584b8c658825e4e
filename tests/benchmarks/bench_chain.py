"""Throughput through a chain link against the same nodes connected directly.

Runs, alternately and --repeat times each, one task on:
  direct: console → N1, N2            (two nodes × 1 slot)
  chain:  console → A(link) → B      (the link computes too: the same two slots)
and prints the median wall times and the ratio chain / direct. The task is compute-bound
(``--shape w1``: invert 384×384, norms, 25 items per chunk; target ≤ 1.10) or
dispatch-bound (``--shape w3``: det of 8×8, full results, 10 items per chunk; target ≤ 1.2).
Each run also prints the CPU time every process used during the task (on Linux): the
front-end, each node's agent, and its workers; on two cores the time follows their sum.

    python tests/benchmarks/bench_chain.py [--shape w1|w3] [--items 600] [--repeat 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
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


def _cpu_s(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its live children's) from /proc; NaN where unreadable."""
    def own(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own(pid), sum(own(int(child)) for child in children)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(host: Host, folder: Path, name: str, upstream: int, listen: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nodes", "--name", name, "--slots", "1", "--state-dir", str(folder / name),
           "--key", str(host.state.node_key), "--host-key", str(host.state.host_key) + ".pub",
           "--connect", f"127.0.0.1:{upstream}"]
    if listen:
        cmd += ["--listen", f"127.0.0.1:{listen}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host.nodes.append(proc)
    return proc


SHAPES = {
    "w1": {"operation": "invert", "chunk_size": 25, "return": "norms", "n": 384},
    "w3": {"operation": "det", "chunk_size": 10, "return": "full", "n": 8},
}
"""The task of each ``--shape``: W1's and W3's of the cluster benchmark."""


def task_document(name: str, shape: str, items: int, seed: int) -> dict:
    kind = SHAPES[shape]
    return {"name": name, "operation": kind["operation"], "chunk_size": kind["chunk_size"], "return": kind["return"],
            "inputs": {"a": {"generate": {"count": items, "shape": [kind["n"], kind["n"]], "seed": seed}}}}


async def run_one(shape: str, items: int, seed: int, task: str = "w1", cpu: dict | None = None) -> float:
    """Seconds for one task of ``task``'s shape, its nodes connected ``shape`` ("direct" or "chain");
    ``cpu``, if given, gets each process's CPU seconds during the task."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        host = Host(StateDir(folder / "state"), ServerSettings(port=0))
        await host.start()
        try:
            port = host.server.address[1]
            if shape == "direct":
                nodes = {"N1": _node(host, folder, "N1", port), "N2": _node(host, folder, "N2", port)}
            else:
                link = _free_port()
                nodes = {"A": _node(host, folder, "A", port, listen=link), "B": _node(host, folder, "B", link)}
            want = set(nodes)
            deadline = time.monotonic() + 60
            while {r.name for r in host.frontend.node_rows()} < want or \
                    sum(r.slots for r in host.frontend.node_rows() if not r.via) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{shape}: nodes did not connect")
                await asyncio.sleep(0.05)
            document = task_document(shape, task, items, seed)
            processes = {"front-end": os.getpid(), **{name: proc.pid for name, proc in nodes.items()}}
            before = {name: _cpu_s(pid) for name, pid in processes.items()}
            began = time.perf_counter()
            task_id = await host.frontend.submit(parse_task(document), "operator")
            summary = await host.frontend.wait(task_id)
            elapsed = time.perf_counter() - began
            assert summary["state"] == "done", summary
            if cpu is not None:
                for name, pid in processes.items():
                    (own, workers), (own_before, workers_before) = _cpu_s(pid), before[name]
                    cpu[name] = own - own_before
                    if name != "front-end":  # the front-end's children are no node's workers
                        cpu[f"{name} workers"] = workers - workers_before
            return elapsed
        finally:
            await host.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="w1", help="the task: W1's or W3's (default w1)")
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"direct": [], "chain": []}
    for run in range(args.repeat):
        for shape in ("direct", "chain"):
            cpu: dict[str, float] = {}
            times[shape].append(await run_one(shape, args.items, 100 + run, args.shape, cpu))
            used = ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
            print(f"run {run + 1}: {shape:6} {times[shape][-1]:.2f} s; CPU s: {used}; all {sum(cpu.values()):.2f}",
                  flush=True)
    direct, chain = statistics.median(times["direct"]), statistics.median(times["chain"])
    load = os.getloadavg()[0]
    print(f"\nmedian direct {direct:.2f} s, chain {chain:.2f} s, ratio chain/direct {chain / direct:.3f} "
          f"(load average {load:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"times": times, "direct_s": direct, "chain_s": chain,
                                         "ratio": chain / direct, "load": load}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
