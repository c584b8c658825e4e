"""A warm chainconsole front-end in a process of its own, driven by bench_cluster over a pipe.

    python tests/benchmarks/cluster_frontend.py --nodes N --state-dir D [--replicate SHARE]

It hosts a front-end (SSH server on 127.0.0.1 port 0) with N local node processes of one
slot each, waits until every node is connected and idle, and prints one JSON line:
``{"pid": ..., "nodes": [pids]}``. Then, for each JSON line it reads on stdin —
``{"document": TASK, "kill_at": FRACTION or null}`` — it waits for a full idle fleet
(replacing a node killed before), submits the task, and prints one JSON line: the seconds
from submit until ``wait`` returned (after the results were fsynced), the summary, the
task's folder, the node pids, and the CPU seconds the task cost the front-end, the node
agents and their workers. End of input stops everything cleanly.

Nodes are separate processes, so the parent can measure this process's memory as the
front-end's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from console.engine.host import Host, start_local_node
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir
from protocol.taskfile import parse_task

READY_TIMEOUT_S = 120.0
POLL_S = 0.01


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (its children not included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """A process's child processes (a node's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as found:
            return [int(child) for child in found.read().split()]
    except OSError:
        return []


def fleet_cpu(nodes: list[int]) -> dict[str, float]:
    """CPU seconds so far of this front-end, of the node agents, and of their workers."""
    return {"frontend": cpu_seconds(os.getpid()),
            "agents": sum(cpu_seconds(pid) for pid in nodes),
            "workers": sum(cpu_seconds(child) for pid in nodes for child in children(pid))}


def kill_node(proc) -> None:
    """SIGKILL a node and its worker processes, as when its machine dies."""
    for pid in (proc.pid, *children(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class WarmFrontEnd:
    """The hosted front-end and its nodes, kept at full strength between tasks."""

    def __init__(self, state: StateDir, nodes: int, replicate: float | None = None) -> None:
        options = {} if replicate is None else {"replica_rate": replicate}
        self.host = Host(state, ServerSettings(port=0), nodes, options)
        self.size = nodes

    async def fleet_ready(self) -> None:
        """Wait until every node is connected and holds nothing; replace dead ones first."""
        frontend, server = self.host.frontend, self.host.server
        assert frontend is not None and server is not None
        for index, proc in enumerate(self.host.nodes):
            if proc.poll() is not None:
                self.host.nodes[index] = start_local_node(self.host.state, server.address, f"local{index + 1}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while sum(row.state == "idle" for row in frontend.node_rows()) < self.size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.size} nodes did not all connect in {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_S * 5)

    async def run_task(self, document: dict, kill_at: float | None) -> dict:
        """Submit, wait, report; with ``kill_at``, SIGKILL the first node at that fraction done."""
        frontend = self.host.frontend
        assert frontend is not None
        await self.fleet_ready()
        task = parse_task(document)
        pids = [proc.pid for proc in self.host.nodes]
        cpu_before = fleet_cpu(pids)
        began = time.perf_counter()
        task_id = await frontend.submit(task, "operator")
        waiter = asyncio.ensure_future(frontend.wait(task_id))
        killed_at = None
        if kill_at is not None:
            killed_at = await self._kill_when(task_id, task.count * kill_at, waiter, began)
        summary = await waiter
        seconds = time.perf_counter() - began
        cpu_s = None
        if killed_at is None:  # a killed node's CPU time is gone with it
            cpu_after = fleet_cpu(pids)
            cpu_s = {part: cpu_after[part] - cpu_before[part] for part in cpu_after}
        return {"seconds": seconds, "summary": summary, "folder": str(self.host.state.task_dir(task_id)),
                "nodes": pids, "killed_at_s": killed_at, "cpu_s": cpu_s}

    async def _kill_when(self, task_id: str, items: float, waiter: asyncio.Future, began: float) -> float | None:
        frontend = self.host.frontend
        assert frontend is not None
        while not waiter.done():
            done = next(row.items_done for row in frontend.task_rows() if row.task_id == task_id)
            if done >= items:
                kill_node(self.host.nodes[0])
                return time.perf_counter() - began
            await asyncio.sleep(POLL_S)
        return None


async def serve(state: StateDir, nodes: int, replicate: float | None) -> None:
    warm = WarmFrontEnd(state, nodes, replicate)
    await warm.host.start()
    try:
        await warm.fleet_ready()
        _say({"pid": os.getpid(), "nodes": [proc.pid for proc in warm.host.nodes]})
        while line := await asyncio.to_thread(sys.stdin.readline):
            request = json.loads(line)
            _say(await warm.run_task(request["document"], request.get("kill_at")))
    finally:
        await warm.host.stop()


def _say(reply: dict) -> None:
    print(json.dumps(reply), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--replicate", type=float, help="the front-end's --replicate share")
    args = parser.parse_args()
    asyncio.run(serve(StateDir(args.state_dir), args.nodes, args.replicate))


if __name__ == "__main__":
    main()
