"""The front-end's own CPU per result, without SSH: a real FrontEnd fed by fake node sessions.

A real ``Host`` (state folder, journal, writer, result files) takes two nodes that are
plain objects: every assignment the front-end sends them is answered at once with a
result computed beforehand, straight into ``FrontEnd.received``. What is measured is the
process's CPU time per result (the event loop and the writer thread): the check, the Hub
and Dispatcher, storing and journaling — everything but SSH, frames and the nodes.

    python tests/benchmarks/bench_frontend.py [--items 50000] [--chunk 10] [--repeat 3] [--profile]

Against ``bench_cluster.py``'s front-end CPU per W3 chunk, the difference is what the
network path costs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from console.engine.host import Host  # noqa: E402
from console.engine.statedir import StateDir  # noqa: E402
from console.ssh.server import ServerSettings  # noqa: E402
from nodes.kernels import compute  # noqa: E402
from protocol.messages import PROTOCOL_VERSION, Assign, Hello, Result  # noqa: E402
from protocol.taskfile import parse_task  # noqa: E402
from tests.fake_node import RecordingSession  # noqa: E402


async def run_once(items: int, chunk: int, seed: int, profile: cProfile.Profile | None) -> tuple[float, int]:
    """CPU seconds per result, and the results answered, for one W3-shaped task."""
    document = {"name": "w3", "operation": "det", "chunk_size": chunk, "return": "full",
                "inputs": {"a": {"generate": {"count": items, "shape": [8, 8], "seed": seed}}}}
    task = parse_task(document)
    outputs = {c: compute("det", {"a": task.input_items("a", s, min(s + chunk, items))}, "full")
               for c, s in enumerate(range(0, items, chunk))}
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(StateDir(Path(tmp) / "state"), ServerSettings(port=0))
        await host.start()
        try:
            frontend = host.frontend
            sessions = [RecordingSession() for _ in range(2)]
            ids = [frontend.admit(session, Hello(PROTOCOL_VERSION, f"n{i}", 1, 96), f"n{i}", f"fp{i}", "127.0.0.1:1")
                   for i, session in enumerate(sessions)]
            task_id = await frontend.submit(task, "operator")
            answered = 0
            began = time.process_time()
            if profile is not None:
                profile.enable()
            while not frontend.tasks[task_id].finished.is_set():
                progressed = False
                for node_id, session in zip(ids, sessions):
                    sent, session.sent = session.sent, []
                    for message in sent:
                        if isinstance(message, Assign):
                            out = outputs[message.chunk]
                            # Built as a channel cuts one from a checked batch: not the front-end's cost.
                            result = Result.construct(task_id=message.task_id, chunk=message.chunk,
                                                      attempt=message.attempt, ok=out.ok, result=out.result,
                                                      norms=out.norms, elapsed_s=0.0004, computed_by="")
                            await frontend.received(node_id, result)
                            answered += 1
                            progressed = True
                if not progressed:
                    await asyncio.sleep(0.001)  # the writer seals the task
            if profile is not None:
                profile.disable()
            return (time.process_time() - began) / answered, answered
        finally:
            await host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile; the top functions")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    per_result = []
    for run in range(args.repeat):
        seconds, answered = asyncio.run(run_once(args.items, args.chunk, run + 1, None))
        per_result.append(seconds)
        print(f"run {run + 1}: {answered} results, {seconds * 1e3:.3f} ms CPU per result", flush=True)
    print(f"median {statistics.median(per_result) * 1e3:.3f} ms CPU per result "
          f"(load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)")
    if args.profile:
        profile = cProfile.Profile()
        asyncio.run(run_once(args.items, args.chunk, 99, profile))
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
