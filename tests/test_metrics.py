"""--metrics serves Prometheus text: scraped over HTTP while a real front-end computes with a real node."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from console.engine.host import Host
from console.engine.keys import initialize
from console.engine.statedir import StateDir
from console.ssh.server import ServerSettings
from protocol.taskfile import parse_task
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(90)

TASK = {"name": "metered", "operation": "invert", "chunk_size": 10,
        "inputs": {"a": {"generate": {"count": 40, "shape": [8, 8], "seed": 5}}}}


async def _get(address: tuple[str, int], path: str) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_scrape_shows_nodes_tasks_events_round_trips_and_loop_lag(tmp_path) -> None:
    state = StateDir(tmp_path / "state")
    initialize(state)
    async with Host(state, ServerSettings(port=0), local_nodes=1, metrics=("127.0.0.1", 0)) as host:
        assert host.frontend is not None and host.metrics_server is not None
        await wait_until(lambda: any(r.state == "idle" for r in host.frontend.node_rows()), 30, "the node to join")
        task_id = await host.frontend.submit(parse_task(TASK), "operator")
        await asyncio.wait_for(host.frontend.wait(task_id), 60)

        status, body = await _get(host.metrics_server.address, "/metrics")
        assert status == "HTTP/1.1 200 OK"
        samples = _samples(body)
        assert samples[("chainconsole_nodes", (("state", "idle"),))] == 1
        assert samples[("chainconsole_slots", ())] == 1
        assert samples[("chainconsole_tasks", (("state", "done"),))] == 1
        assert samples[("chainconsole_items_done", ())] == 40
        assert samples[("chainconsole_events_total", (("kind", "finished"),))] == 1
        assert samples[("chainconsole_events_total", (("kind", "join"),))] == 1
        assert samples[("chainconsole_chunk_round_trip_seconds_count", ())] == 4  # one per chunk
        assert samples[("chainconsole_chunk_round_trip_seconds_sum", ())] > 0
        assert samples[("chainconsole_loop_lag_seconds", ())] >= 0

        status, _ = await _get(host.metrics_server.address, "/elsewhere")
        assert status == "HTTP/1.1 404 Not Found"
