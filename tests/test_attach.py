"""``chainconsole attach``: the console attached over SSH to a running front-end, the console
stream it reads (``ssh … watch``), and the observer role — refused by the console and the server.

Front-ends are real: an in-process Host with its real SSH server on 127.0.0.1 port 0 and real
node processes, or a real ``serve`` process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys

import asyncssh
import pytest

from console.cli.attach import AttachedFrontEnd
from console.cli.client import Endpoint
from console.engine.host import Host
from console.engine.keys import Role, public_key_line
from console.engine.statedir import StateDir
from console.tui.app import KEY_ACTIONS, ConsoleApp
from console.tui.detail import TaskDetailScreen
from console.tui.modals import ConfirmModal
from console.tui.tables import NodesTable, TasksTable
from protocol.taskfile import parse_task
from tests.conftest import REPO, cli, wait_until

pytestmark = pytest.mark.timeout(90)

SIZE = (130, 40)
TASK = {"name": "attached", "operation": "invert", "chunk_size": 5,
        "inputs": {"a": {"generate": {"count": 40, "shape": [8, 8], "seed": 3, "distribution": "normal"}}}}
LONG = {"name": "long", "operation": "invert", "chunk_size": 10, "return": "norms",
        "inputs": {"a": {"generate": {"count": 200_000, "shape": [32, 32], "seed": 4, "distribution": "normal"}}}}


def endpoint(host: Host, key=None) -> Endpoint:
    address = host.server.address
    return Endpoint(address[0], address[1], key or host.state.operator_key, host.state.host_key_pub)


def enrol(host: Host, role: Role, name: str, tmp_path) -> object:
    """A new key, authorized on ``host`` as ``role``; its private key file."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / f"{name}_key"
    key.write_private_key(path)
    path.chmod(0o600)
    host.server.registry.add(role, public_key_line(key), name)
    return path


def attached(host: Host, key=None) -> ConsoleApp:
    return ConsoleApp(source=AttachedFrontEnd(endpoint(host, key)), refresh_s=0.1)


def enabled(app: ConsoleApp) -> dict[str, bool]:
    active = app.screen.active_bindings
    return {a.action: active[a.key].enabled for a in KEY_ACTIONS if a.key in active}


def events_of(host: Host, kind: str) -> list[str]:
    return [e.node_id or e.task_id for e in host.frontend.events if e.kind == kind]


async def ssh_run(host: Host, key, command: str) -> asyncssh.SSHCompletedProcess:
    address = host.server.address
    async with asyncssh.connect(address[0], address[1], username="user", client_keys=[str(key)],
                                known_hosts=([str(host.state.host_key_pub)], [], []), config=None,
                                agent_path=None, gss_host=None) as conn:
        return await conn.run(command, check=False)


# -- the console, attached -----------------------------------------------------------------------


async def test_an_attached_console_shows_nodes_and_tasks_drains_and_kicks(host: Host, nodes, tmp_path) -> None:
    nodes("n1")
    nodes("n2")
    await wait_until(lambda: sum(n.state == "idle" for n in host.frontend.node_rows()) == 2, 30, "the nodes to join")
    task_id = await host.frontend.submit(parse_task(TASK), "alice")
    await asyncio.wait_for(host.frontend.wait(task_id), 30)
    running = await host.frontend.submit(parse_task(LONG), "operator")
    app = attached(host)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: "n1" in app.snapshot.nodes_by_id and task_id in app.snapshot.tasks_by_id,
                         20, "the attached console to read the front-end")
        await pilot.pause()
        nodes_table, tasks_table = app.main.query_one(NodesTable), app.main.query_one(TasksTable)
        await wait_until(lambda: nodes_table.row_count == 2 and tasks_table.row_count == 2, 10, "the rows drawn")
        assert app.snapshot.tasks_by_id[task_id].state == "done"
        assert app.snapshot.tasks_by_id[task_id].items_done == 40
        await wait_until(lambda: app.snapshot.tasks_by_id[running].items_done > 0, 20, "the running task's progress")
        assert str(app.identity.fingerprint) == asyncssh.read_public_key(
            str(host.state.host_key_pub)).get_fingerprint("sha256")

        # The running task's screen, with its chunk map read over SSH.
        app.main.select_task(running)
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, TaskDetailScreen), 10, "the task screen")
        await wait_until(lambda: app.source.detail(running).chunks is not None, 10, "the chunk map")
        detail = app.source.detail(running)
        assert sum(c.stop - c.start for c in detail.chunks) == 200_000
        assert any(c.state == "done" for c in detail.chunks) and set(detail.shares) <= {"n1", "n2"}
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, TaskDetailScreen), 10, "back to the main screen")

        # Drain and kick, over the attachment, by the operator key.
        nodes_table.focus()
        nodes_table.select_key("n1")
        await pilot.pause()
        assert enabled(app)["drain"] is True
        await pilot.press("d")
        await wait_until(lambda: "n1" in events_of(host, "drain"), 10, "the front-end to drain n1")
        await wait_until(lambda: app.snapshot.nodes_by_id["n1"].state not in ("idle", "busy"), 10,
                         "the console to see it")
        nodes_table.select_key("n2")
        await pilot.pause()
        await pilot.press("k")
        await wait_until(lambda: isinstance(app.screen, ConfirmModal), 10, "the kick confirmation")
        assert "Kick node n2" in app.screen.question
        await pilot.press("y")
        await wait_until(lambda: "n2" in events_of(host, "kick"), 10, "the front-end to kick n2")
        await wait_until(lambda: app.snapshot.nodes_by_id["n2"].state == "kicked", 10, "the console to see it")
        await pilot.press("q")
        await wait_until(lambda: not app.is_running, 10, "the attached console to quit")
    assert app.return_code == 0
    # Quitting detached only: the front-end still answers, and the task runs on.
    result = await ssh_run(host, host.state.operator_key, "tasks")
    assert result.exit_status == 0 and {t["task_id"] for t in json.loads(result.stdout)} == {task_id, running}
    assert host.frontend.task(running).state == "running"
    host.frontend.cancel(running)


async def test_an_observer_sees_everything_and_its_keys_are_dimmed(host: Host, nodes, tmp_path) -> None:
    nodes("n1")
    watcher = enrol(host, Role.OBSERVER, "watcher", tmp_path)
    task_id = await host.frontend.submit(parse_task(LONG), "alice")
    app = attached(host, watcher)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(lambda: "n1" in app.snapshot.nodes_by_id and task_id in app.snapshot.tasks_by_id,
                             30, "the observer's console to read the front-end")
            await pilot.pause()
            assert "observer" in app.identity.address
            keys = enabled(app)
            for action in ("submit", "drain", "kick", "cancel_task"):
                assert keys[action] is False, action
            assert keys["help"] is True and keys["quit"] is True
            await pilot.press("d", "k", "c")
            await pilot.pause(0.5)
            assert events_of(host, "drain") == [] and host.frontend.task(task_id).state in ("queued", "running")
            await pilot.press("q")
            await wait_until(lambda: not app.is_running, 10, "the observer's console to quit")
    finally:
        host.frontend.cancel(task_id)


@pytest.mark.parametrize("command", ["drain n1", "kick n1", "release n1", "cancel {task}", "delete {task}",
                                     "approve SHA256:abc", "submit --detach"])
async def test_the_server_refuses_an_observer_every_change(host: Host, nodes, tmp_path, command) -> None:
    nodes("n1")
    watcher = enrol(host, Role.OBSERVER, "watcher", tmp_path)
    task_id = await host.frontend.submit(parse_task(LONG), "alice")
    try:
        await wait_until(lambda: any(n.node_id == "n1" for n in host.frontend.node_rows()), 30, "the node")
        result = await ssh_run(host, watcher, command.format(task=task_id))
        assert result.exit_status == 2
        assert "observers may look but not change anything" in result.stderr
        assert events_of(host, "drain") == [] and events_of(host, "kick") == []
        assert host.frontend.task(task_id).state in ("queued", "running")
        assert [t.task_id for t in host.frontend.task_rows()] == [task_id]
        # What it may do: see every task (alice's too), every node, any task's chunk map.
        tasks = await ssh_run(host, watcher, "tasks")
        assert [t["task_id"] for t in json.loads(tasks.stdout)] == [task_id]
        chunks = await ssh_run(host, watcher, f"chunks {task_id}")
        assert chunks.exit_status == 0 and json.loads(chunks.stdout)["task_id"] == task_id
    finally:
        host.frontend.cancel(task_id)


async def test_a_user_key_may_not_watch_the_whole_front_end(host: Host, tmp_path) -> None:
    user = enrol(host, Role.USER, "bob", tmp_path)
    result = await ssh_run(host, user, "watch")
    assert result.exit_status == 2 and "only operators and observers" in result.stderr
    app = attached(host, user)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: not app.is_running, 20, "the console to give up")
    assert app.return_code == 3


async def test_a_key_that_is_not_there_ends_the_attached_console_with_status_3(host: Host, tmp_path) -> None:
    app = attached(host, tmp_path / "no_such_key")
    async with app.run_test(size=SIZE):
        await wait_until(lambda: not app.is_running, 20, "the console to give up")
    assert app.return_code == 3


def test_keys_add_observer_enrols_a_key_that_may_watch(tmp_path) -> None:
    state = tmp_path / "state"
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "watcher.pub").write_bytes(key.export_public_key("openssh"))
    added = cli("keys", "add-observer", str(tmp_path / "watcher.pub"), "--name", "night-shift", "--state-dir", str(state))
    assert added.returncode == 0 and "as observer" in added.stdout
    shown = json.loads(cli("keys", "show", "--json", "--state-dir", str(state)).stdout)
    assert {"role": "observer", "name": "night-shift", "fingerprint": key.get_fingerprint("sha256")} in shown["authorized"]
    assert (state / "authorized_observers").read_text().strip().endswith("night-shift")


# -- the stream, for any program -------------------------------------------------------------------


async def test_the_console_stream_over_stock_openssh(host: Host, nodes, tmp_path) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("OpenSSH client not installed")
    nodes("n1")
    await wait_until(lambda: any(n.node_id == "n1" for n in host.frontend.node_rows()), 30, "the node")
    address = host.server.address
    known = tmp_path / "known_hosts"
    known.write_text(f"[{address[0]}]:{address[1]} " + " ".join(host.state.host_key_pub.read_text().split()[:2]))
    proc = await asyncio.create_subprocess_exec(
        ssh, "-F", "/dev/null", "-p", str(address[1]), "-i", str(host.state.operator_key), "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}", f"operator@{address[0]}", "watch",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert hello["type"] == "hello" and hello["role"] == "operator" and hello["stream"] == 1
        lines = []
        task_id = await host.frontend.submit(parse_task(TASK), "operator")
        while not any(line["type"] == "state" and any(t["task_id"] == task_id and t["state"] == "done"
                                                      for t in line["tasks"]) for line in lines):
            lines.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)))
        kinds = {line["type"] for line in lines}
        assert kinds == {"event", "state"}
        assert any(line["type"] == "event" and line["kind"] == "join" and line["node_id"] == "n1" for line in lines)
        assert any(line["type"] == "event" and line["kind"] == "finished" and line["task_id"] == task_id
                   for line in lines)
        state = next(line for line in reversed(lines) if line["type"] == "state")
        assert [n["name"] for n in state["nodes"]] == ["n1"] and state["pending_keys"] == []
    finally:
        proc.terminate()
        await proc.wait()
    # The watcher is gone: the front-end let go of it (no listener left behind).
    await wait_until(lambda: len(host.frontend._listeners) == 0, 10, "the stream to end")


def test_the_documented_stream_example_is_what_the_console_reads() -> None:
    from console.engine import console_stream as stream

    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text[text.index("## The console stream"):]
    block = section[section.index("```text") + len("```text"):]
    lines = [json.loads(line) for line in block[: block.index("```")].strip().splitlines()]
    assert [line["type"] for line in lines] == ["hello", "event", "state"]
    hello, event, state = lines
    assert hello["stream"] == stream.STREAM_VERSION and stream.read_limits(hello["limits"]).max_items > 0
    assert stream.read_event(event).node_id == "gpu01"
    assert stream.read_nodes(state["nodes"])[0].via == ()
    assert stream.read_tasks(state["tasks"])[0].items_done == 1200
    assert stream.read_pending(state["pending_keys"]) == []


# -- against a real serve ------------------------------------------------------------------------


def start_serve(state: StateDir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from console.cli.main import main; main()", "serve",
                             "--state-dir", str(state.root), "--listen", "127.0.0.1:0"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def attached_to_serve(state: StateDir) -> ConsoleApp:
    await wait_until(lambda: state.endpoint.exists(), 30, "serve to listen")
    port = json.loads(state.endpoint.read_text())["port"]
    return ConsoleApp(source=AttachedFrontEnd(Endpoint("127.0.0.1", port, state.operator_key, state.host_key_pub)),
                      refresh_s=0.1)


def test_quitting_an_attached_console_leaves_serve_running(tmp_path) -> None:
    state = StateDir(tmp_path / "state")
    serve = start_serve(state)
    try:
        async def attach_and_quit() -> ConsoleApp:
            app = await attached_to_serve(state)
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(lambda: app.source.started_at > 0, 20, "the stream's hello")
                await pilot.press("q")
                await wait_until(lambda: not app.is_running, 10, "the console to quit")
            return app

        app = asyncio.run(attach_and_quit())
        assert app.return_code == 0
        assert serve.poll() is None  # still serving
        tasks = cli("tasks", "--json", "--state-dir", str(state.root))
        assert tasks.returncode == 0 and json.loads(tasks.stdout) == []
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err


def test_an_attached_console_ends_with_status_3_when_serve_stops(tmp_path) -> None:
    state = StateDir(tmp_path / "state")
    serve = start_serve(state)
    try:
        async def attach_until_serve_stops() -> ConsoleApp:
            app = await attached_to_serve(state)
            async with app.run_test(size=SIZE):
                await wait_until(lambda: app.source.started_at > 0, 20, "the stream's hello")
                serve.send_signal(signal.SIGTERM)
                await wait_until(lambda: not app.is_running, 30, "the console to see serve go")
            return app

        app = asyncio.run(attach_until_serve_stops())
        assert app.return_code == 3
        assert "127.0.0.1" in app.source.ended
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)

