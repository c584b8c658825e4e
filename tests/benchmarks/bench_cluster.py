"""chainconsole against the physical baseline and Dask, side by side on one machine.

For each workload (cluster_workloads.py: W1 compute-bound, W2 data-heavy, W3
dispatch-bound, W4 recovery) it times, in alternation so that the machine's noise hits
every system alike:

- ``pool``: a spawn multiprocessing pool with one worker per node — the same chunks, the
  same ``compute_chunk``, no network: what the hardware can do;
- ``warm``: a running chainconsole front-end with N nodes × 1 slot over real SSH, from
  submit until the results are fsynced on disk;
- ``cold``: the whole ``chainconsole run TASK.json --local-nodes N -o OUT.npz --json``;
- ``dask-tcp`` / ``dask-tls``: a dask.distributed LocalCluster of N worker processes,
  ``client.map`` over the same chunks (skipped when dask is not installed);
- W4 runs W1 on 3 nodes twice: fault-free (``warm``) and with one node SIGKILLed at 50%
  (``warm-kill``);
- ``COLD20``: ``chainconsole run`` of a 20-item task, start to finish (median of --repeat
  runs after one that fills the bytecode cache);
- ``CHAIN``: a W3-shaped task through a chain link against the same two nodes connected
  directly (``bench_chain.py --shape w3``).

At the end it prints the issue's table: each target, the figure measured in this run and
a verdict, with the load average (the console's keys are ``bench_console.py``'s rows).

Every run's results are compared with the pool's. Ratios (system ÷ pool, median over the
repeats of the ratio within one repeat) are what to report: the machine is shared and
noisy. The front-end's peak memory is measured in its own process.

    python tests/benchmarks/bench_cluster.py [--workloads W1,W2,W3,W4] [--repeat 3] [--nodes 2]
        [--systems pool,warm,cold,dask-tcp,dask-tls] [--json OUT.json] [--quick] [--profile DIR]
        [--replicate SHARE]
    python tests/benchmarks/bench_cluster.py --workloads W1,W2,W3,COLD20,CHAIN --systems pool,warm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from cluster_systems import DaskSystem, PoolSystem, WarmChainconsole, profiled, run_cold  # noqa: E402
from cluster_workloads import WARM_UP, Workload, load_results, same_results, workloads  # noqa: E402
from profile_summary import render  # noqa: E402
from bench_chain import run_one as run_chain_task  # noqa: E402

SYSTEMS = ("pool", "warm", "cold", "dask-tcp", "dask-tls")
RECOVERY_SYSTEMS = ("pool", "warm", "warm-kill")
LABELS = {"pool": "pool (spawn)", "warm": "chainconsole warm", "cold": "chainconsole cold",
          "dask-tcp": "dask tcp", "dask-tls": "dask tls", "warm-kill": "chainconsole warm, 1 node killed"}
TARGETS = {"W1": 1.05, "W2": 1.10, "W3": 2.0}
"""Warm chainconsole ÷ pool, at most (and faster than Dask over TLS)."""
CPU_PER_CHUNK_TARGET_MS = {"W3": 0.25}
"""Front-end CPU, and node-agent CPU (all agents together), per chunk, at most."""
COLD_TARGET_S = 1.2
CHAIN_TARGET = 1.2
EXTRAS = ("COLD20", "CHAIN")
"""Rows of the issue's table measured outside the workloads' rounds."""
CHAIN_ITEMS = {False: 50_000, True: 5_000}
"""Items of the W3-shaped chain task, full and ``--quick``."""
RSS_TARGET_MIB = 300


@dataclass
class WorkloadReport:
    """Every timing of one workload, and what the checks found."""

    workload: Workload
    nodes: int
    times: dict[str, list[float]]
    memory_mib: list[dict[str, float]] = field(default_factory=list)
    cpu_s: list[dict[str, float]] = field(default_factory=list)
    killed_at_s: list[float] = field(default_factory=list)
    replicated: list[int] = field(default_factory=list)
    """Chunks of each warm run held for a second computation (the summary's ``replicated_chunks``)."""
    problems: list[str] = field(default_factory=list)

    def median(self, system: str) -> float:
        return statistics.median(self.times[system])

    def ratio(self, system: str) -> float:
        """Median over repeats of this system's time ÷ the pool's time in the same repeat."""
        return self.paired(system, "pool")

    def paired(self, system: str, other: str) -> float:
        """Median over repeats of this system's time ÷ the other's time in the same repeat."""
        return statistics.median(t / o for t, o in zip(self.times[system], self.times[other]))

    def checks(self) -> list[str]:
        """The issue's targets for this workload, each with its verdict."""
        name, found = self.workload.name, []
        if "warm" in self.times and name in TARGETS:
            ratio = self.ratio("warm")
            found.append(f"{name} warm ≤ {TARGETS[name]}× pool: {ratio:.2f}× {_verdict(ratio <= TARGETS[name])}")
            if "dask-tls" in self.times:
                versus = self.paired("warm", "dask-tls")
                found.append(f"{name} warm faster than dask tls: {versus:.2f}× its time "
                             f"{_verdict(versus < 1)}")
        if name == "W2" and self.memory_mib:
            peak = max(m["hwm"] for m in self.memory_mib)
            anon = max(m["anon"] for m in self.memory_mib)
            found.append(f"W2 front-end peak RSS < {RSS_TARGET_MIB} MiB: {peak:.0f} MiB "
                         f"(anonymous {anon:.0f} MiB) {_verdict(peak < RSS_TARGET_MIB)}")
        if self.cpu_s:
            chunks = len(self.workload.jobs())
            cpu = {part: statistics.median(run[part] for run in self.cpu_s) for part in self.cpu_s[0]}
            found.append(f"{name} warm CPU per run: front-end {cpu['frontend']:.2f} s, node agents "
                         f"{cpu['agents']:.2f} s, workers {cpu['workers']:.2f} s; per chunk "
                         f"{1000 * cpu['frontend'] / chunks:.2f} ms + {1000 * cpu['agents'] / chunks:.2f} ms")
            if name in CPU_PER_CHUNK_TARGET_MS:
                target = CPU_PER_CHUNK_TARGET_MS[name]
                for part, label in (("frontend", "front-end"), ("agents", "node-agent")):
                    ms = 1000 * cpu[part] / chunks
                    found.append(f"{name} {label} CPU per chunk ≤ {target} ms: {ms:.2f} ms {_verdict(ms <= target)}")
        if self.replicated:
            chunks = len(self.workload.jobs())
            twice = statistics.median(self.replicated)
            found.append(f"{name} warm chunks computed twice (replication): {twice:g} of {chunks} "
                         f"({100 * twice / chunks:.1f}% more chunk computations)")
        if "warm-kill" in self.times:
            found.append(f"{name} one node killed at {self.workload.kill_at:.0%}: "
                         f"{self.paired('warm-kill', 'warm'):.2f}× the fault-free run on {self.nodes} nodes")
        return found

    def cpu_per_chunk_ms(self) -> dict[str, float]:
        """Median CPU milliseconds per chunk of the front-end, all node agents and all workers."""
        if not self.cpu_s:
            return {}
        chunks = len(self.workload.jobs())
        return {part: 1000 * statistics.median(run[part] for run in self.cpu_s) / chunks for part in self.cpu_s[0]}

    def to_json(self) -> dict:
        return {
            "description": self.workload.describe(),
            "nodes": self.nodes,
            "times_s": self.times,
            "median_s": {s: self.median(s) for s in self.times},
            "ratio_to_pool": {s: self.ratio(s) for s in self.times},
            "frontend_memory_mib": self.memory_mib,
            "warm_cpu_s": self.cpu_s,
            "killed_at_s": self.killed_at_s,
            "replicated_chunks": self.replicated,
            "checks": self.checks(),
            "problems": self.problems,
        }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class Systems:
    """The systems under test, started on first use and kept warm; one of each per size."""

    def __init__(self, root: Path, replicate: float | None = None) -> None:
        self.root = root
        self.replicate = replicate
        """The warm front-end's ``--replicate`` share; None: its default."""
        self.setup_s: dict[str, float] = {}
        self._pools: dict[int, PoolSystem] = {}
        self._warm: dict[int, WarmChainconsole] = {}
        self._dask: dict[tuple[int, bool], DaskSystem] = {}

    def pool(self, workers: int) -> PoolSystem:
        if workers not in self._pools:
            pool = self._pools[workers] = PoolSystem(workers)
            self.setup_s[f"pool-{workers}"] = pool.start_s
            pool.run(WARM_UP, self.root / "warm-up")
            shutil.rmtree(self.root / "warm-up")
        return self._pools[workers]

    def warm(self, nodes: int) -> WarmChainconsole:
        if nodes not in self._warm:
            warm = self._warm[nodes] = WarmChainconsole(nodes, self.root / f"frontend-{nodes}", self.replicate)
            self.setup_s[f"warm-{nodes}"] = warm.start_s
            shutil.rmtree(warm.run(WARM_UP)["folder"])
        return self._warm[nodes]

    def dask(self, workers: int, tls: bool) -> DaskSystem:
        if (workers, tls) not in self._dask:
            dask = self._dask[workers, tls] = DaskSystem(workers, tls)
            self.setup_s[f"dask-{'tls' if tls else 'tcp'}-{workers}"] = dask.start_s
            dask.run(WARM_UP, self.root / "warm-up")
            shutil.rmtree(self.root / "warm-up")
        return self._dask[workers, tls]

    def close(self) -> None:
        for system in (*self._warm.values(), *self._dask.values(), *self._pools.values()):
            system.close()


def run_once(systems: Systems, system: str, workload: Workload, nodes: int, folder: Path,
             report: WorkloadReport) -> tuple[float, Path]:
    """One timed run; returns its seconds and where its results are."""
    if system == "pool":
        return systems.pool(nodes).run(workload, folder), folder
    if system in ("warm", "warm-kill"):
        reply = systems.warm(nodes).run(workload, kill=system == "warm-kill")
        if system == "warm-kill":
            report.killed_at_s.append(reply["killed_at_s"])
        else:
            report.memory_mib.append(reply["memory_mib"])
            report.cpu_s.append(reply["cpu_s"])
            report.replicated.append(reply["summary"].get("replicated_chunks", 0))
        return reply["seconds"], Path(reply["folder"])
    if system == "cold":
        return run_cold(workload, nodes, folder), folder / "out.npz"
    return systems.dask(nodes, system == "dask-tls").run(workload, folder), folder


def bench_workload(systems: Systems, workload: Workload, nodes: int, chosen: tuple[str, ...],
                   repeat: int, say: Callable[[str], None]) -> WorkloadReport:
    """Run every chosen system ``repeat`` times, rotating their order each round."""
    if workload.kill_at is None:
        order = list(chosen)
    else:  # the recovery workload: the fault-free and the faulty run on the same warm fleet
        order = [s for s in RECOVERY_SYSTEMS if s == "pool" or "warm" in chosen]
    report = WorkloadReport(workload, nodes, {system: [] for system in order})
    reference: tuple[np.ndarray, np.ndarray] | None = None
    reference_folder = None
    for round_ in range(repeat):
        shift = round_ % len(order)
        for system in order[shift:] + order[:shift]:
            folder = systems.root / f"{workload.name}-{system}-{round_}"
            seconds, results = run_once(systems, system, workload, nodes, folder, report)
            report.times[system].append(seconds)
            say(f"{workload.name} round {round_ + 1}/{repeat} {LABELS[system]:<32} {seconds:8.2f} s")
            outcome = load_results(results)
            if reference is None:  # the pool runs first in round one
                reference, reference_folder = outcome, results
                continue
            problem = same_results(reference, outcome)
            if problem:
                report.problems.append(f"{system} round {round_ + 1}: {problem}")
                say(f"  MISMATCH: {problem}")
            del outcome
            shutil.rmtree(results if results.is_dir() else results.parent, ignore_errors=True)
    del reference
    if reference_folder is not None:
        shutil.rmtree(reference_folder, ignore_errors=True)
    return report


def profile_workload(systems: Systems, workload: Workload, nodes: int, folder: Path) -> list[str]:
    """One extra warm run (not counted) with py-spy on the front-end and on one node and its workers."""
    warm = systems.warm(nodes)
    targets = {"frontend": (warm.pid, False), "node": (warm.node_pids[0], True)}
    with profiled(targets, folder / workload.name) as outputs:
        reply = warm.run(workload)
    shutil.rmtree(reply["folder"], ignore_errors=True)
    return [render(f"{workload.name} {name}", path) for name, path in zip(targets, outputs)]


COLD_TASK = Workload("cold20", "a 20-item task from a cold start", "det", 20, 8, 10, "full")


def bench_cold(root: Path, nodes: int, repeat: int, say: Callable[[str], None]) -> list[float]:
    """``chainconsole run`` of a 20-item task, ``repeat`` times after one untimed run."""
    times = []
    for round_ in range(repeat + 1):
        folder = root / f"cold20-{round_}"
        seconds = run_cold(COLD_TASK, nodes, folder)
        problem = same_results(load_results(folder / "out.npz"), load_results(folder / "out.npz"))
        assert not problem
        shutil.rmtree(folder, ignore_errors=True)
        if round_:  # the first run fills the bytecode cache, as installing a package does
            times.append(seconds)
            say(f"COLD20 round {round_}/{repeat} chainconsole run, 20 items    {seconds:8.2f} s")
    return times


def bench_chain(items: int, repeat: int, say: Callable[[str], None]) -> dict[str, list[float]]:
    """A W3-shaped task through a chain link and direct, alternately, ``repeat`` times each."""
    import asyncio

    times: dict[str, list[float]] = {"direct": [], "chain": []}
    for round_ in range(repeat):
        order = ("direct", "chain") if round_ % 2 == 0 else ("chain", "direct")
        for shape in order:
            times[shape].append(asyncio.run(run_chain_task(shape, items, 300 + round_, "w3")))
            say(f"CHAIN round {round_ + 1}/{repeat} {shape:<6} W3 shape, {items:,} items {times[shape][-1]:8.2f} s")
    return times


def issue_table(reports: list[WorkloadReport], cold: list[float], chain: dict[str, list[float]],
                load: tuple[float, float]) -> str:
    """The issue's targets, what this run measured, and a verdict for each."""
    by_name = {r.workload.name: r for r in reports}
    rows: list[tuple[str, str, str, bool | None]] = []

    def ratio_row(name: str) -> None:
        report = by_name.get(name)
        if report is not None and "warm" in report.times:
            value = report.ratio("warm")
            rows.append((f"{name} warm ÷ pool", f"{value:.2f}×", f"≤ {TARGETS[name]}×", value <= TARGETS[name]))

    ratio_row("W3")
    w3 = by_name.get("W3")
    if w3 is not None and w3.cpu_s:
        cpu = w3.cpu_per_chunk_ms()
        target = CPU_PER_CHUNK_TARGET_MS["W3"]
        rows.append(("front-end CPU per W3 chunk", f"{cpu['frontend']:.2f} ms", f"≤ {target} ms", cpu["frontend"] <= target))
        rows.append(("node-agent CPU per W3 chunk", f"{cpu['agents']:.2f} ms", f"≤ {target} ms", cpu["agents"] <= target))
        rows.append(("worker CPU per W3 chunk (for scale)", f"{cpu['workers']:.2f} ms", "", None))
    ratio_row("W1")
    ratio_row("W2")
    if cold:
        value = statistics.median(cold)
        rows.append(("cold `chainconsole run`, 20 items", f"{value:.2f} s", f"≤ {COLD_TARGET_S} s", value <= COLD_TARGET_S))
    if chain["direct"]:
        value = statistics.median(c / d for c, d in zip(chain["chain"], chain["direct"]))
        rows.append(("through a chain link, W3 shape", f"{value:.2f}× direct", f"≤ {CHAIN_TARGET}×", value <= CHAIN_TARGET))
    lines = [f"{'issue row':<38} {'measured':>14} {'target':>10}  verdict"]
    for label, value, target, ok in rows:
        lines.append(f"{label:<38} {value:>14} {target:>10}  {'' if ok is None else _verdict(ok)}")
    lines.append(f"(console keys: bench_console.py; load average {load[0]:.2f} before, {load[1]:.2f} after)")
    return "\n".join(lines)


def table(reports: list[WorkloadReport]) -> str:
    lines = [f"{'workload':<9} {'system':<33} {'median s':>9} {'× pool':>7} {'runs':>5}"]
    for report in reports:
        for system, times in report.times.items():
            lines.append(f"{report.workload.name + ' @' + str(report.nodes):<9} {LABELS[system]:<33} "
                         f"{report.median(system):9.2f} {report.ratio(system):7.2f} {len(times):5}")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    from threadpoolctl import threadpool_info

    import asyncssh

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    dask = importlib.util.find_spec("distributed")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": sorted({f"{i['internal_api']} {i['version']}" for i in threadpool_info() if i["user_api"] == "blas"}),
        "asyncssh": asyncssh.__version__,
        "distributed": __import__("distributed").__version__ if dask else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2,W3,W4,COLD20,CHAIN",
                        help="comma-separated, from W1,W2,W3,W4,COLD20,CHAIN")
    parser.add_argument("--repeat", type=int, help="runs of each system per workload; the median counts "
                                                   "(default 3, 1 with --quick)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes × 1 slot, and pool and dask workers (default 2)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write every time and ratio here")
    parser.add_argument("--replicate", type=float, metavar="SHARE",
                        help="the warm front-end's --replicate share (default: the front-end's, 0.1)")
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes: a smoke run in under a minute")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after each workload, one extra warm run under py-spy; collapsed stacks go here")
    args = parser.parse_args(argv)
    known = workloads(args.quick)
    args.workloads = [name.strip().upper() for name in args.workloads.split(",") if name.strip()]
    args.systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    for name in args.workloads:
        if name not in known and name not in EXTRAS:
            parser.error(f"unknown workload {name!r}; known: {', '.join([*known, *EXTRAS])}")
    for system in args.systems:
        if system not in SYSTEMS:
            parser.error(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    if "pool" not in args.systems:
        parser.error("the pool is the baseline every ratio divides by; keep it in --systems")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or args.nodes < 1:
        parser.error("--repeat and --nodes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.systems
    if importlib.util.find_spec("distributed") is None and any(s.startswith("dask") for s in chosen):
        print("dask.distributed is not installed: skipping the Dask systems "
              "(pip install -e '.[bench]' to include them)", file=sys.stderr)
        chosen = tuple(s for s in chosen if not s.startswith("dask"))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    known = workloads(args.quick)
    info = machine()
    load_before = os.getloadavg()
    say(f"{info['nproc']} cpus ({info['cpu']}), Python {info['python']}, numpy {info['numpy']}, "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="chainconsole-bench-"))
    systems = Systems(root, args.replicate)
    reports: list[WorkloadReport] = []
    profiles: list[str] = []
    began = time.perf_counter()
    cold: list[float] = []
    chain: dict[str, list[float]] = {"direct": [], "chain": []}
    try:
        for name in args.workloads:
            if name == "COLD20":
                cold = bench_cold(root, args.nodes, args.repeat, say)
                continue
            if name == "CHAIN":
                chain = bench_chain(CHAIN_ITEMS[args.quick], args.repeat, say)
                continue
            workload = known[name]
            nodes = workload.nodes or args.nodes
            say(workload.describe())
            reports.append(bench_workload(systems, workload, nodes, chosen, args.repeat, say))
            if args.profile and workload.kill_at is None and "warm" in chosen:
                profiles += profile_workload(systems, workload, nodes, args.profile)
    finally:
        systems.close()
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()

    print(table(reports))
    for report in reports:
        for line in report.checks() + [f"PROBLEM {report.workload.name}: {p}" for p in report.problems]:
            print(line)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(1 min); {time.perf_counter() - began:.0f} s in all")
    print()
    print(issue_table(reports, cold, chain, (load_before[0], load_after[0])))
    for text in profiles:
        print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info,
            "options": {"workloads": args.workloads, "repeat": args.repeat, "nodes": args.nodes,
                        "systems": list(chosen), "quick": args.quick},
            "load_average_before": load_before,
            "load_average_after": load_after,
            "setup_s": systems.setup_s,
            "workloads": {r.workload.name: r.to_json() for r in reports},
            "cold20_s": cold,
            "chain_w3_s": chain,
            "issue_table": issue_table(reports, cold, chain, (load_before[0], load_after[0])).splitlines(),
            "profiles": profiles,
        }, indent=2) + "\n")
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
