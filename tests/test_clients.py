"""Independent clients against a real front-end: stock OpenSSH ``ssh``, paramiko, and the CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import sys

import numpy as np
import pytest

from console.engine.host import Host
from tests.conftest import REPO, wait_until
from tests.reference import check_npz

pytestmark = pytest.mark.timeout(90)

TASK = {"name": "ssh-demo", "operation": "invert", "chunk_size": 10,
        "inputs": {"a": {"generate": {"count": 50, "shape": [16, 16], "seed": 21, "distribution": "normal"}}}}


def _known_hosts(host: Host, path) -> str:
    address = host.server.address
    key = (host.state.host_key.with_name("host_key.pub")).read_text().split()[:2]
    path.write_text(f"[{address[0]}]:{address[1]} {' '.join(key)}\n")
    return str(path)


async def _ssh(host: Host, tmp_path, command: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("OpenSSH client not installed")
    address = host.server.address
    args = [ssh, "-F", "/dev/null", "-p", str(address[1]), "-i", str(host.state.operator_key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={_known_hosts(host, tmp_path / 'known_hosts')}",
            f"user@{address[0]}", command]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out, err


async def test_stock_openssh_client_submits_and_fetches_results(host: Host, nodes, tmp_path) -> None:
    nodes("n1")
    status, out, err = await _ssh(host, tmp_path, "submit", json.dumps(TASK).encode())
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["event"] == "accepted" and events[-1]["event"] == "done"
    assert events[-1]["state"] == "done" and events[-1]["ok_items"] == 50
    task_id = events[0]["task_id"]

    status, npz, err = await _ssh(host, tmp_path, f"result {task_id}")
    assert status == 0, err
    (tmp_path / "out.npz").write_bytes(npz)
    check_npz(tmp_path / "out.npz", TASK, rtol=1e-8)

    status, out, _ = await _ssh(host, tmp_path, "submit --detach", json.dumps(TASK).encode())
    assert status == 0 and json.loads(out)["task_id"] != task_id


async def test_paramiko_is_a_second_independent_client(host: Host, nodes) -> None:
    paramiko = pytest.importorskip("paramiko")
    nodes("n1")
    address = host.server.address

    def session() -> tuple[list[dict], bytes]:
        client = paramiko.SSHClient()
        kind, data = host.state.host_key.with_name("host_key.pub").read_text().split()[:2]
        client.get_host_keys().add(f"[{address[0]}]:{address[1]}", kind,
                                   paramiko.PKey.from_type_string(kind, base64.b64decode(data)))
        client.connect(address[0], address[1], username="user", key_filename=str(host.state.operator_key),
                       look_for_keys=False, allow_agent=False, timeout=20)
        try:
            stdin, stdout, _ = client.exec_command("submit")
            stdin.write(json.dumps(TASK))
            stdin.channel.shutdown_write()
            events = [json.loads(line) for line in stdout.read().splitlines()]
            _, stdout, _ = client.exec_command(f"result {events[0]['task_id']}")
            return events, stdout.read()
        finally:
            client.close()

    events, npz = await asyncio.to_thread(session)
    assert events[-1]["state"] == "done"
    np.testing.assert_array_equal(np.load(io.BytesIO(npz))["ok"], np.ones(50, bool))
    check_npz(io.BytesIO(npz), TASK, rtol=1e-8)


async def _cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from console.cli.main import main; main()", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_submit_wait_and_nodes_against_a_running_front_end(host: Host, nodes, tmp_path) -> None:
    nodes("alpha")
    nodes("beta")
    await wait_until(lambda: len(host.frontend.node_rows()) == 2, what="two nodes")
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({**TASK, "inputs": {"a": {"generate": {
        "count": 400, "shape": [32, 32], "seed": 3}}}}))
    state = ["--state-dir", str(host.state.root)]
    status, out, err = await _cli("submit", str(task_file), *state, "--wait", "-o", str(tmp_path / "o.npz"), "--json")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["state"] == "done" and summary["ok_items"] == 400
    check_npz(tmp_path / "o.npz", json.loads(task_file.read_text()), rtol=1e-8)

    status, out, err = await _cli("nodes", "--json", *state)
    assert status == 0, err
    listed = {row["name"]: row for row in json.loads(out)}
    assert set(listed) == {"alpha", "beta"}
    assert sum(row["items_done"] for row in listed.values()) == 400

    status, out, err = await _cli("submit", str(task_file), *state, "--json")
    assert status == 0, err
    task_id = json.loads(out)["task_id"]
    status, out, err = await _cli("tasks", "--json", *state)
    assert task_id in {row["task_id"] for row in json.loads(out)}


async def test_cli_errors_are_one_line_with_the_documented_exit_status(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"operation": "invert", "inputs": {"a": {"generate": {"count": 2, "shape": [3, 4], "seed": 1}}}}')
    status, out, err = await _cli("submit", str(bad), "--state-dir", str(tmp_path / "s"))
    assert status == 2 and "inputs.a.generate.shape" in err and "Traceback" not in err
    bad.write_text(json.dumps(TASK))
    status, out, err = await _cli("submit", str(bad), "--state-dir", str(tmp_path / "s"), "--connect", "127.0.0.1:1")
    assert status == 3 and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.timeout(120)
async def test_cli_run_one_shot(tmp_path) -> None:
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(TASK))
    status, out, err = await _cli("run", str(task_file), "--local-nodes", "2", "-o", str(tmp_path / "r.npz"), "--json")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["state"] == "done" and summary["ok_items"] == 50
    check_npz(tmp_path / "r.npz", TASK, rtol=1e-8)


@pytest.mark.timeout(120)
async def test_run_replicates_the_share_the_operator_chose(tmp_path) -> None:
    task_file = tmp_path / "det.json"  # det has no check cheaper than computing it again: replicated
    task_file.write_text(json.dumps({"name": "replicas", "operation": "det", "chunk_size": 10,
                                     "inputs": {"a": {"generate": {"count": 400, "shape": [6, 6], "seed": 3}}}}))
    replicated = {}
    for share in ("1", "0"):
        status, out, err = await _cli("run", str(task_file), "--local-nodes", "2", "--replicate", share, "--json")
        assert status == 0, err
        summary = json.loads(out)
        assert summary["state"] == "done" and summary["ok_items"] == 400
        replicated[share] = summary["replicated_chunks"]
    assert replicated["1"] == 40  # every chunk computed twice
    assert replicated["0"] == 0  # off
    status, out, err = await _cli("run", str(task_file), "--replicate", "2")
    assert status == 2 and "between 0 and 1" in err and "Traceback" not in err


async def test_eight_parallel_result_downloads_get_identical_whole_files(host: Host, nodes, tmp_path) -> None:
    nodes("n1", slots=2)
    document = {"name": "download", "operation": "invert", "chunk_size": 50,
                "inputs": {"a": {"generate": {"count": 1000, "shape": [48, 48], "seed": 23}}}}
    from protocol.taskfile import parse_task

    task_id = await host.frontend.submit(parse_task(document), "operator")
    summary = await asyncio.wait_for(host.frontend.wait(task_id), 60)
    assert summary["state"] == "done"
    outputs = [tmp_path / f"out{i}.npz" for i in range(8)]
    runs = await asyncio.gather(*(_cli("result", task_id, "-o", str(path), "--state-dir", str(host.state.root))
                                  for path in outputs))
    assert [status for status, _, _ in runs] == [0] * 8, [err for _, _, err in runs]
    first = outputs[0].read_bytes()
    assert all(path.read_bytes() == first for path in outputs[1:])
    check_npz(outputs[0], document, rtol=1e-8)
    assert not list(host.state.task_dir(task_id).glob("*.part")), "a temporary download file was left behind"
    assert not [e for e in host.frontend.events if e.kind == "error"]


async def test_an_upload_of_array_inputs_runs_and_a_broken_one_is_refused(host: Host, nodes, tmp_path) -> None:
    """The CLI's frame upload, then the same bytes cut short and garbled, sent by stock ssh."""
    from protocol.taskfile import load_task_file
    from protocol.upload import encode_upload

    nodes("n1")
    task = load_task_file(REPO / "sample_tasks" / "solve-file.json")
    upload = b"".join(bytes(piece) for piece in encode_upload(task))
    status, out, err = await _ssh(host, tmp_path, "submit", upload)
    assert status == 0, err
    assert json.loads(out.splitlines()[-1])["ok_items"] == task.count

    for broken in (upload[: len(upload) // 2], b"CC\x01\x00" + bytes(8), upload[:12] + b"{not json" + upload[21:]):
        status, out, err = await _ssh(host, tmp_path, "submit", broken)
        assert status == 2, err
        assert b"Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith(b"chainconsole: upload: ")
        assert json.loads(out)["event"] == "rejected"


@pytest.mark.parametrize("command", ["submit", "run"])
def test_a_missing_task_file_is_named_in_one_line(command: str, tmp_path) -> None:
    from tests.conftest import cli

    missing = tmp_path / "nope.json"
    done = cli(command, str(missing), *(["--state-dir", str(tmp_path / "state")] if command == "submit" else []))
    assert done.returncode == 2
    assert done.stderr.strip() == f"chainconsole: {missing}: no such file"


def test_every_subcommand_help_says_what_it_does() -> None:
    from console.cli.main import build_parser

    def commands(parser, path=()):
        for action in parser._subparsers._group_actions if parser._subparsers else ():
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))

    found = dict(commands(build_parser()))
    assert {("serve",), ("run",), ("submit",), ("result",), ("keys", "approve")} <= set(found)
    for path, parser in found.items():
        assert parser.description and parser.description.strip(), f"chainconsole {' '.join(path)} --help"


async def test_ctrl_c_on_submit_wait_prints_one_line_and_leaves_the_task_running(host: Host, nodes, tmp_path) -> None:
    import signal

    nodes("slow")
    await wait_until(lambda: len(host.frontend.node_rows()) == 1, what="the node")
    task_file = tmp_path / "long.json"
    task_file.write_text(json.dumps({"name": "long", "operation": "invert", "chunk_size": 10, "return": "norms",
                                     "inputs": {"a": {"generate": {"count": 1_000_000, "shape": [64, 64],
                                                                   "seed": 5}}}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from console.cli.main import main; main()", "submit", str(task_file), "--wait",
        "--state-dir", str(host.state.root), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_until(lambda: any(r.items_done for r in host.frontend.task_rows()), 30, "the task to run")
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (row,) = host.frontend.task_rows()
    assert proc.returncode == 130
    # Without a terminal there is no bar: one line when the task is accepted, one when stopped.
    assert err.decode().strip().splitlines() == [
        f"submitted {row.task_id}",
        f"chainconsole: stopped by SIGINT; task {row.task_id} keeps running on the front-end "
        f"(chainconsole cancel {row.task_id} stops it)"]
    assert row.state == "running"
    host.frontend.cancel(row.task_id)


def test_run_and_submit_show_one_bar_with_rate_elapsed_time_and_eta() -> None:
    from console.cli.report import TaskProgress

    screen = io.StringIO()
    with TaskProgress("inv", 1000, file=screen, terminal=True) as progress:
        progress.show(0, now=100.0)
        progress.show(250, now=105.0)
    shown = screen.getvalue()
    assert "inv" in shown and "250/1000" in shown and "25%" in shown
    assert "50 items/s" in shown and "elapsed" in shown and "ETA 0:00:15" in shown  # 750 left at 50/s
    assert "\n" in shown.rsplit("ETA", 1)[1]  # whatever comes next starts on its own line
    quiet = io.StringIO()
    with TaskProgress("inv", 1000, file=quiet, terminal=False) as progress:
        progress.show(500)
    assert quiet.getvalue() == ""  # not a terminal: scripts see only the summary


def test_every_option_of_every_subcommand_has_help_text() -> None:
    from console.cli.main import build_parser

    def parsers(parser, path=("chainconsole",)):
        yield path, parser
        for action in parser._subparsers._group_actions if parser._subparsers else ():
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))

    missing = [f"{' '.join(path)} {action.option_strings[0]}"
               for path, parser in parsers(build_parser()) for action in parser._actions
               if action.option_strings and not action.help]
    assert missing == []


def test_the_console_without_a_terminal_says_so_in_one_line(tmp_path) -> None:
    from tests.conftest import cli

    done = cli("--state-dir", str(tmp_path / "state"), input=b"")
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "chainconsole: the console needs a terminal; `chainconsole serve` runs the front-end without one"]
    assert b"\x1b[" not in done.stdout and not (tmp_path / "state").exists()
