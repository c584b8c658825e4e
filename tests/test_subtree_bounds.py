"""What a node's subtree report can get from the console: bounded rows, bounded certificates."""

from __future__ import annotations

import asyncssh
import pytest

from console.engine.frontend import CERTIFICATE_BURST, MAX_CERTIFICATES_PER_LINK, FrontEnd
from protocol.hub import MAX_SUBTREE_NODES
from protocol.messages import Hello, HostCertificate, Subtree
from tests.fake_node import RecordingSession


def host_key_line() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


KEYS = [host_key_line() for _ in range(4)]


def entry(name: str, via: tuple[str, ...] = (), host_key: str = "") -> dict:
    return {"name": name, "state": "idle", "slots": 1, "in_flight": 0, "items_done": 0, "errors": 0,
            "via": list(via), "host_key": host_key}


@pytest.fixture
async def frontend(state):
    front = FrontEnd(state)
    yield front
    front.journal.close()


def certificates(session: Session) -> list[HostCertificate]:
    return [m for m in session.sent if isinstance(m, HostCertificate)]


async def join(frontend: FrontEnd, name: str, fingerprint: str, host_key: str = "") -> tuple[str, Session]:
    session = RecordingSession()
    node_id = frontend.admit(session, Hello(2, name, 1, 2, host_key=host_key), name, fingerprint, "10.0.0.9")
    return node_id, session


async def test_a_plain_nodes_fake_subtree_gets_no_certificate_and_no_rows(frontend: FrontEnd) -> None:
    node_id, session = await join(frontend, "plain", "SHA256:plain")
    fake = tuple(entry(f"fake{i}", host_key=KEYS[i % 4]) for i in range(10_000))
    await frontend.received(node_id, Subtree(fake))
    assert certificates(session) == []
    rows = frontend.node_rows()
    assert len(rows) <= MAX_SUBTREE_NODES and [row.name for row in rows] == ["plain"]
    assert not any(e.kind == "certify" for e in frontend.events)


async def test_a_links_huge_report_is_capped_in_rows_and_certificates(frontend: FrontEnd) -> None:
    link_id, session = await join(frontend, "relay", "SHA256:relay", host_key=host_key_line())
    fake = tuple(entry(f"fake{i}", host_key=host_key_line()) for i in range(200)) + tuple(
        entry(f"more{i}") for i in range(9_800))
    report = Subtree(fake)
    await frontend.received(link_id, report)
    assert len(certificates(session)) == CERTIFICATE_BURST
    assert len(frontend.node_rows()) == 1 + MAX_SUBTREE_NODES
    # Time refills the bucket, but never past the per-link cap, and a reconnect does not reset it.
    for step in range(1, MAX_CERTIFICATES_PER_LINK + 5):
        frontend.now = lambda step=step: 10_000.0 * step  # type: ignore[method-assign]
        await frontend.received(link_id, report)
    assert len(certificates(session)) == MAX_CERTIFICATES_PER_LINK
    frontend.departed(link_id, clean=True, reason="bye")
    link_id, again = await join(frontend, "relay", "SHA256:relay", host_key=host_key_line())
    await frontend.received(link_id, report)
    assert certificates(again) == []


async def test_a_link_behind_gets_one_certificate_under_its_own_name_only_where_the_report_places_it(
        frontend: FrontEnd) -> None:
    direct, _ = await join(frontend, "gpu", "SHA256:gpu")
    link_id, session = await join(frontend, "relay", "SHA256:relay", host_key=host_key_line())
    report = (
        entry("b", host_key=KEYS[0]),                 # a link right behind relay
        entry("c", ("b",), host_key=KEYS[1]),         # behind b, which the report lists
        entry("d", ("ghost",), host_key=KEYS[2]),     # behind a link the report does not list
        entry(direct, host_key=KEYS[3]),              # a name a node of the console holds
        entry("twice", host_key=host_key_line()), entry("twice", host_key=host_key_line()),
    )
    await frontend.received(link_id, Subtree(report))
    await frontend.received(link_id, Subtree(report))  # the same report again gets nothing more
    assert [c.node for c in certificates(session)] == ["b", "c"]
    ca = asyncssh.read_private_key(frontend.state.host_key)
    for cert, key in zip(certificates(session), KEYS):
        issued = asyncssh.import_certificate(cert.certificate)
        assert issued.key == asyncssh.import_public_key(key)
        assert issued.signing_key.public_data == ca.public_data
