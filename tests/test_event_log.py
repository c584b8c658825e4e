"""serve writes one line per event to stderr — plain or JSON — and the console the same to a file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from console.engine.eventlog import format_event
from console.engine.records import Event
from tests.conftest import REPO, cli

pytestmark = pytest.mark.timeout(90)

TASK = {"name": "logged", "operation": "det", "chunk_size": 10,
        "inputs": {"a": {"generate": {"count": 40, "shape": [6, 6], "seed": 3}}}}


def test_an_event_is_one_line_with_a_timestamp_plain_or_json() -> None:
    event = Event(1_700_000_000.25, "lost", "n1: silent for 6.0 s", task_id="", node_id="n1")
    assert format_event(event) == "2023-11-14T22:13:20.250Z lost       n1: silent for 6.0 s"
    assert json.loads(format_event(event, as_json=True)) == {
        "time": "2023-11-14T22:13:20.250Z", "kind": "lost", "message": event.message, "node_id": "n1"}
    control = format_event(Event(0, "x", "a\nb\x1b[31m"))
    assert "\n" not in control and "\x1b" not in control


def test_serve_logs_joins_submissions_finished_tasks_and_operator_actions(tmp_path) -> None:
    state = tmp_path / "state"
    serve = subprocess.Popen(
        [sys.executable, "-c", "from console.cli.main import main; main()", "serve", "--state-dir", str(state),
         "--listen", "127.0.0.1:0", "--local-nodes", "1", "--log-format", "json"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert "listening on" in serve.stderr.readline()
        task_file = tmp_path / "task.json"
        task_file.write_text(json.dumps(TASK))
        lines: list[dict] = []

        def read_until(kind: str) -> dict:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = serve.stderr.readline()
                if line.startswith("{"):
                    lines.append(json.loads(line))
                    if lines[-1]["kind"] == kind:
                        return lines[-1]
            raise AssertionError(f"no {kind} event in {lines}")

        read_until("join")
        done = cli("submit", str(task_file), "--wait", "--json", "--state-dir", str(state))
        assert done.returncode == 0, done.stderr
        finished = read_until("finished")
        assert finished["task_id"] == json.loads(done.stdout)["task_id"]
        drained = cli("drain", "local1", "--state-dir", str(state))
        assert drained.returncode == 0, drained.stderr
        action = read_until("operator")
        assert action["message"] == "drain local1 by operator" and action["node_id"] == "local1"
        assert {"join", "submitted", "finished", "operator"} <= {line["kind"] for line in lines}
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]) for line in lines)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    assert serve.returncode == 0
