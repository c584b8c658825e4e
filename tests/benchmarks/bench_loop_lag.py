"""How long the front-end's event loop stalls under load: a large upload, and W2.

A sampler task on the front-end's loop sleeps 10 ms again and again and records how far
each wake-up overshoots; a blocked loop shows as a long overshoot. Two phases, each with
two real nodes connected over SSH:

  upload:  an eigvalsh task with a ~500 MB file input goes up through ``chainconsole
           submit`` (real SSH, a CLI subprocess) while the nodes compute another task;
  W2:      the data-heavy workload (invert 256×256, full results, 25 items a chunk:
           many large results to store).

For each phase it prints the lag's max and p99, the load average, and the nodes the
front-end lost ("lost"/"close" events; the target is none, and max lag < 100 ms). An
idle phase first (nodes connected, no work) shows what the machine's load alone costs.

    python tests/benchmarks/bench_loop_lag.py [--upload-mb 500] [--w2-items 2000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from console.engine.host import Host, start_local_node  # noqa: E402
from console.engine.statedir import StateDir  # noqa: E402
from console.ssh.server import ServerSettings  # noqa: E402
from protocol.taskfile import parse_task  # noqa: E402

SAMPLE_S = 0.010
UPLOAD_N = 256
NODES = ("lag1", "lag2")
IDLE_S = 5.0


@dataclass
class LagSampler:
    """Overshoots of a 10 ms sleep on the running loop, while ``active``."""

    samples: list[float] = field(default_factory=list)
    active: bool = False

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(SAMPLE_S)
            if self.active:
                self.samples.append(time.perf_counter() - began - SAMPLE_S)

    def report(self) -> dict[str, float]:
        lags = sorted(self.samples) or [0.0]
        return {"samples": len(self.samples), "max_ms": round(lags[-1] * 1000, 1),
                "p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 1),
                "median_ms": round(statistics.median(lags) * 1000, 2)}


def _departures(host: Host) -> list[str]:
    return [e.message for e in host.frontend.events if e.kind in ("lost", "close")]


async def _wait_nodes(host: Host) -> None:
    deadline = time.monotonic() + 60
    while sum(r.slots for r in host.frontend.node_rows() if r.state != "gone") < len(NODES):
        if time.monotonic() > deadline:
            raise RuntimeError("nodes did not connect")
        await asyncio.sleep(0.05)


def _background(seed: int) -> dict:
    """Work the nodes do while the upload goes up: a few seconds of inverses."""
    return {"name": "background", "operation": "invert", "chunk_size": 20, "return": "norms",
            "inputs": {"a": {"generate": {"count": 600, "shape": [192, 192], "seed": seed}}}}


async def _phase(host: Host, sampler: LagSampler, name: str, body) -> dict:
    lost_before = len(_departures(host))
    sampler.samples.clear()
    sampler.active = True
    began = time.perf_counter()
    try:
        await body()
    finally:
        sampler.active = False
    report = {"phase": name, "wall_s": round(time.perf_counter() - began, 2), **sampler.report(),
              "loadavg_1m": round(os.getloadavg()[0], 2), "nodes_lost": _departures(host)[lost_before:]}
    print(f"{name:>7}: max {report['max_ms']:7.1f} ms  p99 {report['p99_ms']:6.1f} ms  "
          f"median {report['median_ms']:5.2f} ms  ({report['samples']} samples, {report['wall_s']} s, "
          f"load {report['loadavg_1m']})  nodes lost: {len(report['nodes_lost'])}", flush=True)
    for line in report["nodes_lost"]:
        print(f"         {line}")
    return report


async def main(upload_mb: int, w2_items: int, slow_callbacks: bool = False) -> list[dict]:
    if slow_callbacks:
        asyncio.get_running_loop().slow_callback_duration = 0.05
    with tempfile.TemporaryDirectory(prefix="bench-lag-") as tmp:
        folder = Path(tmp)
        items = max(1, upload_mb * 2**20 // (UPLOAD_N * UPLOAD_N * 8))
        rng = np.random.default_rng(7)
        m = rng.standard_normal((items, UPLOAD_N, UPLOAD_N))
        m += np.swapaxes(m, -1, -2)
        np.save(folder / "sym.npy", m)
        del m
        (folder / "upload.json").write_text(json.dumps(
            {"name": "big-upload", "operation": "eigvalsh", "return": "norms",
             "inputs": {"a": {"file": "sym.npy"}}}))

        host = Host(StateDir(folder / "state"), ServerSettings(port=0))
        await host.start()
        sampler = LagSampler()
        sampling = asyncio.get_running_loop().create_task(sampler.run())
        reports = []
        try:
            for node in NODES:
                host.nodes.append(start_local_node(host.state, host.server.address, node, 1))
            await _wait_nodes(host)
            frontend = host.frontend

            async def upload() -> None:
                background = await _submit(frontend, parse_task(_background(3)))
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", "from console.cli.main import main; main()", "submit",
                    str(folder / "upload.json"), "--state-dir", str(host.state.root), "--json",
                    cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"submit failed ({proc.returncode}): {err.decode()[-500:]}")
                await frontend.wait(background)

            async def w2() -> None:
                document = {"name": "w2", "operation": "invert", "chunk_size": 25, "return": "full",
                            "max_attempts": 3, "inputs": {"a": {"generate": {
                                "count": w2_items, "shape": [256, 256], "seed": 2024}}}}
                summary = await frontend.wait(await _submit(frontend, parse_task(document)))
                if summary["state"] != "done":
                    raise RuntimeError(f"W2 ended {summary['state']}")

            # The floor: what the machine's load alone costs the loop, nodes connected, no work.
            reports.append(await _phase(host, sampler, "idle", lambda: asyncio.sleep(IDLE_S)))
            reports.append(await _phase(host, sampler, "upload", upload))
            for record in list(frontend.tasks.values()):  # the uploaded task: let it finish, unmeasured
                await frontend.wait(record.task_id)
            reports.append(await _phase(host, sampler, "W2", w2))
        finally:
            sampling.cancel()
            await host.stop()
        return reports


async def _submit(frontend, task) -> str:
    """Submit on either API: ``submit`` became a coroutine when saving inputs left the loop."""
    task_id = frontend.submit(task, "operator")
    return await task_id if asyncio.iscoroutine(task_id) else task_id  # the code before, for a ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upload-mb", type=int, default=500)
    parser.add_argument("--w2-items", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="write the reports here")
    parser.add_argument("--slow-callbacks", action="store_true",
                        help="log every callback that holds the loop over 50 ms (asyncio debug mode)")
    args = parser.parse_args()
    if args.slow_callbacks:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        os.environ["PYTHONASYNCIODEBUG"] = ""  # the nodes and the CLI run without it
    reports = asyncio.run(main(args.upload_mb, args.w2_items, args.slow_callbacks), debug=args.slow_callbacks)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
