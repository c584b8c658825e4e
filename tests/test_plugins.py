"""Installed operations: the example package of docs/examples, installed for real, against a
real front-end with real node processes — some with the package, some without."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys

import asyncssh
import pytest

from console.engine.host import Host, start_local_node
from console.engine.keys import Role
from protocol.errors import TaskFileError
from protocol.operations import OPERATIONS
from protocol.taskfile import parse_task
from tests import fake_node
from tests.conftest import REPO, wait_until
from tests.reference import check_npz

pytestmark = pytest.mark.timeout(180)

EXAMPLE = REPO / "docs" / "examples" / "example-operations"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> str:
    """The example package installed into a folder of its own; on sys.path here, and on the
    PYTHONPATH of the node processes that should have it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)], check=True, timeout=120,
                   capture_output=True)
    sys.path.insert(0, str(target))
    OPERATIONS.load_installed()
    yield str(target)
    sys.path.remove(str(target))


def task(operation: str, count: int = 24, n: int = 10, seed: int = 3) -> dict:
    return {"name": operation, "operation": operation, "chunk_size": 4,
            "inputs": {"a": {"generate": {"count": count, "shape": [n, n], "seed": seed, "distribution": "spd"}}}}


def test_the_example_package_adds_two_operations(plugin_site: str) -> None:
    assert not OPERATIONS.problems
    cholesky, logdet = OPERATIONS["cholesky"], OPERATIONS["logdet"]
    assert cholesky.source == logdet.source == "chainconsole-example-operations"
    assert cholesky.replicated == ("norms",) and logdet.replicated == ("full", "norms")
    assert parse_task(task("cholesky")).operation == "cholesky"
    with pytest.raises(TaskFileError, match="cholesky needs square matrices"):
        parse_task({**task("cholesky"), "inputs": {"a": {"generate": {"count": 2, "shape": [3, 4], "seed": 1}}}})
    with pytest.raises(TaskFileError, match='did you mean "logdet"'):
        parse_task({**task("cholesky"), "operation": "logdett"})


def _start_node(host: Host, name: str, site: str | None) -> subprocess.Popen:
    """A node process that finds the example package only when ``site`` is given."""
    assert host.server is not None
    with pytest.MonkeyPatch.context() as patch:  # the node inherits this environment
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (site, str(REPO)) if p))
        proc = start_local_node(host.state, host.server.address, name)
    host.nodes.append(proc)
    return proc


async def test_only_nodes_with_the_operation_get_its_chunks_and_compute_them_right(host: Host, plugin_site: str) -> None:
    frontend = host.frontend
    _start_node(host, "plain", None)
    await wait_until(lambda: len(frontend.node_rows()) == 1, what="the plain node")
    document = task("cholesky")
    task_id = await frontend.submit(parse_task(document), "alice")
    await asyncio.sleep(0.5)
    row = frontend.task_row(task_id)
    assert row.items_done == 0 and row.waiting == "no connected node has operation cholesky"

    _start_node(host, "able", plugin_site)
    summary = await asyncio.wait_for(frontend.wait(task_id), 60)
    assert summary["state"] == "done" and set(summary["items_per_node"]) == {"able"}
    assert check_npz(frontend.result_file(task_id), document, rtol=1e-9) == 24
    able = next(r for r in frontend.node_rows() if r.node_id == "able")
    assert able.operations == {"cholesky": "1.0", "logdet": "1.0"}
    from tests.test_clients import _cli

    status, out, err = await _cli("operations", "--json", "--state-dir", str(host.state.root))
    assert status == 0, err
    known = {op["name"]: op for op in json.loads(out)["operations"]}
    assert known["cholesky"]["nodes"] == ["able"] and known["cholesky"]["check"] == "its own"
    assert known["logdet"]["check"] == "replicas" and sorted(known["invert"]["nodes"]) == ["able", "plain"]

    # logdet is replicated: with one able node, the front-end confirms its results itself
    document = task("logdet", seed=4)
    summary = await asyncio.wait_for(frontend.wait(await frontend.submit(parse_task(document), "alice")), 60)
    assert summary["state"] == "done" and set(summary["items_per_node"]) == {"able"}
    assert check_npz(frontend.result_file(summary["task_id"]), document, rtol=1e-9) == 24
    assert not [e for e in frontend.events if e.kind == "invalid"]


def _scale_factor(assign, result):
    """Every Cholesky factor ×1.001: still lower triangular, but wrong."""
    return dataclasses.replace(result, result=result.result * 1.001)


async def test_a_liar_on_an_installed_operation_is_caught_by_its_declared_check(
        host: Host, plugin_site: str, tmp_path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / "liar")
    host.frontend.registry.add(Role.NODE, key.export_public_key().decode(), "liar")
    liar = fake_node.FakeNode(host.server.address, tmp_path / "liar", host.state.host_key_pub, name="liar",
                              slots=2, tamper=_scale_factor, operations={"cholesky": "1.0"})
    await liar.start()
    try:
        document = task("cholesky", seed=5)
        task_id = await host.frontend.submit(parse_task(document), "alice")
        await wait_until(lambda: liar.results_sent >= 1, what="the liar's first answer")
        _start_node(host, "able", plugin_site)
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 60)
        assert summary["state"] == "done" and "liar" not in summary["items_per_node"]
        assert check_npz(host.frontend.result_file(task_id), document, rtol=1e-9) == 24
        assert liar.rejections and all("cholesky check failed" in r.reason for r in liar.rejections)
    finally:
        await liar.close()
