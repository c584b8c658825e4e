"""Keys and roles: the one place that decides who a connecting key is.

A key's role comes only from which authorized-keys file holds it — nodes, users or
operators — never from anything the peer claims. Files use the OpenSSH
authorized_keys line format (``ssh-ed25519 AAAA… NAME``) with the name as comment, read
by asyncssh's parser, so a line may start with OpenSSH options: ``from="10.0.0.0/8"``
limits where the key may log in from; the ``no-…`` and ``restrict`` options ask for
what this server never allows anyway; a line with an option this server cannot honour
(``command=``, ``cert-authority``, ``principals=``) is reported and skipped rather than
let in with less restriction than it asks for.

One more way in, for the nodes a launcher starts: an operator's launcher enrols a fresh
node key of its own for as long as it runs (``enrol_launched``). Such a key is held in
memory only — never written to a file, so a front-end that restarts or a launcher that
dies leaves nothing trusted behind — and is a node key and nothing more.
"""

from __future__ import annotations

import enum
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ipaddress
from typing import Any

import asyncssh

from console.engine.statedir import StateDir, make_private_dir, write_private_file
from protocol.errors import ChainconsoleError

KEY_ALGORITHM = "ssh-ed25519"
MAX_PENDING = 256
HONOURED_OPTIONS = frozenset({
    "from",  # checked at every login
    # What these forbid, this server never does for anyone: no PTY, forwarding, agent, X11,
    # user rc or environment.
    "no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-X11-forwarding", "restrict",
    "environment", "permitopen",
})
"""Options an authorized-keys line may carry; a line with any other is skipped."""
MAX_LAUNCHED = 64
"""Launcher node keys enrolled at once."""


class KeyError_(ChainconsoleError):
    """A key given by the user is not usable (bad format, unknown fingerprint)."""


class Role(enum.Enum):
    """What a connecting key may do."""

    NODE = "node"
    USER = "user"
    OPERATOR = "operator"
    OBSERVER = "observer"
    """Sees everything an operator sees and may change nothing."""


@dataclass(frozen=True)
class KeyEntry:
    """One authorized key: its role, the name it goes by, and its fingerprint."""

    role: Role
    name: str
    fingerprint: str
    public_key: str
    line: asyncssh.SSHAuthorizedKeys | None = field(default=None, compare=False, repr=False)
    """The authorized-keys line it came from, parsed with its options; None: no options."""

    def admits(self, key: asyncssh.SSHKey, address: str) -> bool:
        """Whether the line lets ``key`` log in from ``address`` (its ``from=`` patterns)."""
        if self.line is None:
            return True
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return False  # a from= pattern cannot match an address we do not know
        return self.line.validate(key, address, address) is not None
    launcher: str = ""
    """The launcher that enrolled it for its run (in memory only); "" for a key in a file."""


@dataclass
class PendingKey:
    """A node key that tried to log in and is not authorized (yet)."""

    fingerprint: str
    public_key: str
    address: str
    first_seen: float
    last_seen: float
    attempts: int = 1


def fingerprint(key: asyncssh.SSHKey) -> str:
    """The SHA256 fingerprint OpenSSH prints for ``key``."""
    return key.get_fingerprint("sha256")


def public_key_line(key: asyncssh.SSHKey, name: str = "") -> str:
    """``key`` as one authorized_keys line, ``name`` as its comment."""
    text = key.export_public_key("openssh").decode().split()
    return " ".join(text[:2] + ([name] if name else []))


def parse_public_key(text: str) -> asyncssh.SSHKey:
    """Parse one OpenSSH public key line; raise KeyError_ if it is not one."""
    try:
        return asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise KeyError_(f"not an OpenSSH public key: {exc}") from None


def ensure_keypair(path: Path, comment: str) -> asyncssh.SSHKey:
    """Load the private key at ``path``, creating it (0600) and ``path.pub`` on first use."""
    if path.exists():
        return asyncssh.read_private_key(path)
    make_private_dir(path.parent)
    key = asyncssh.generate_private_key(KEY_ALGORITHM, comment=comment)
    write_private_file(path, key.export_private_key("openssh"))
    write_private_file(path.with_name(path.name + ".pub"), key.export_public_key("openssh"))
    return key


def read_authorized(path: Path, role: Role, report: Callable[[str], None] = lambda problem: None) -> list[KeyEntry]:
    """The entries of one authorized-keys file.

    A file is hostile input like any other: a line that is not UTF-8 or not a public key
    is reported (file name and line number) and skipped; the other lines still count.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        report(f"cannot read {path}: {exc.strerror or exc}")
        return []
    entries = []
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            report(f"{path} line {number}: not UTF-8 text; line skipped")
            continue
        if not line or line.startswith("#"):
            continue
        parsed = parse_authorized_line(line)
        if parsed is None:
            report(f"{path} line {number}: not an OpenSSH public key; line skipped")
            continue
        key, options, authorized = parsed
        unknown = sorted(set(options) - HONOURED_OPTIONS)
        if unknown:
            report(f"{path} line {number}: option {', '.join(unknown)} is not supported here; line skipped")
            continue
        name = key.get_comment() or ""
        entries.append(KeyEntry(role, name, fingerprint(key), public_key_line(key),
                                authorized if options else None))
    return entries


def parse_authorized_line(line: str) -> tuple[asyncssh.SSHKey, dict[str, Any], asyncssh.SSHAuthorizedKeys] | None:
    """One authorized_keys line as (key, its options, the parsed line); None if it is not one."""
    try:
        authorized = asyncssh.import_authorized_keys(line)
    except (asyncssh.KeyImportError, ValueError, TypeError, IndexError):
        return None
    # asyncssh keeps the parsed lines of a list in ``_user_entries`` (and ``_ca_entries``
    # for cert-authority lines, which this server does not take).
    entries = [*getattr(authorized, "_user_entries", []), *getattr(authorized, "_ca_entries", [])]
    if len(entries) != 1 or entries[0].key is None:
        return None
    return entries[0].key, dict(entries[0].options), authorized


def _lines(path: Path) -> list[str]:
    """The lines of a key file as text; bytes that are not UTF-8 survive a rewrite unchanged."""
    if not path.exists():
        return []
    return path.read_bytes().decode("utf-8", errors="surrogateescape").splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    write_private_file(path, ("\n".join(lines) + "\n" if lines else "").encode("utf-8", errors="surrogateescape"))


class KeyRegistry:
    """Authorized and pending keys of one state directory.

    Files are re-read when they change on disk, so ``chainconsole keys …`` run in another
    process takes effect for the next login without a restart.
    """

    def __init__(self, state: StateDir, *, report: Callable[[str], None] | None = None) -> None:
        self.state = state
        self.report = report or (lambda problem: None)
        """Where problems found in the files go (bad lines, permissions fixed): the events log."""
        self._files = {
            Role.NODE: state.authorized_nodes,
            Role.USER: state.authorized_users,
            Role.OPERATOR: state.authorized_operators,
            Role.OBSERVER: state.authorized_observers,
        }
        self._cache: dict[Role, tuple[float, list[KeyEntry]]] = {}
        self._launched: dict[str, KeyEntry] = {}  # fingerprint → a launcher's node key, in memory only

    def entries(self) -> list[KeyEntry]:
        """Every authorized key, operators first (a key listed twice counts with the first), launchers'
        node keys last."""
        result: list[KeyEntry] = []
        for role in (Role.OPERATOR, Role.USER, Role.OBSERVER, Role.NODE):
            result.extend(self._entries(role))
        result.extend(self._launched.values())
        return result

    def enrol_launched(self, public_key: str, launcher: str) -> KeyEntry:
        """Trust ``public_key`` as a node key of ``launcher`` until ``withdraw_launched``.

        A key some file already authorizes is refused: a launcher enrols a key it made.
        """
        key = parse_public_key(public_key)
        fp = fingerprint(key)
        if self.find(fp) is not None:
            raise KeyError_(f"key {fp} is already authorized; a launcher enrols a fresh key of its own")
        if len(self._launched) >= MAX_LAUNCHED:
            raise KeyError_(f"{MAX_LAUNCHED} launcher keys are enrolled already, the most allowed")
        name = _safe_name(launcher)
        entry = KeyEntry(Role.NODE, name, fp, public_key_line(key), launcher=name)
        self._launched[fp] = entry
        return entry

    def withdraw_launched(self, fp: str) -> bool:
        """Stop trusting a launcher's node key; True if it was enrolled."""
        return self._launched.pop(fp, None) is not None

    def launched(self) -> list[KeyEntry]:
        """The node keys launchers enrolled, in the order they did."""
        return list(self._launched.values())

    def _entries(self, role: Role) -> list[KeyEntry]:
        path = self._files[role]
        try:
            info = path.stat()
        except OSError:
            info = None
        if info is not None and info.st_mode & 0o022:
            self._fix_mode(path, info.st_mode)
        mtime = info.st_mtime_ns if info is not None else -1
        cached = self._cache.get(role)
        if cached is None or cached[0] != mtime:
            cached = (mtime, read_authorized(path, role, self.report))
            self._cache[role] = cached
        return cached[1]

    def _fix_mode(self, path: Path, mode: int) -> None:
        """A key file others may write is a way in: make it the owner's only, and say so."""
        try:
            os.chmod(path, stat.S_IMODE(mode) & 0o600)
        except OSError as exc:
            self.report(f"{path} may be written by others (mode {stat.S_IMODE(mode):o}) "
                        f"and cannot be fixed: {exc.strerror}")
            return
        self.report(f"{path} could be written by others (mode {stat.S_IMODE(mode):o}); now 600 — "
                    "check that every key in it belongs there")

    def lookup(self, key: asyncssh.SSHKey) -> KeyEntry | None:
        """The entry that authorizes ``key``, or None."""
        return self.find(fingerprint(key))

    def admit(self, key: asyncssh.SSHKey, address: str) -> KeyEntry | None:
        """The first entry of ``key`` whose options let it log in from ``address`` (an IP), or None."""
        fp = fingerprint(key)
        return next((e for e in self.entries() if e.fingerprint == fp and e.admits(key, address)), None)

    def find(self, fp: str) -> KeyEntry | None:
        """The entry with fingerprint ``fp``; a key listed twice counts with its first (highest) role."""
        return next((e for e in self.entries() if e.fingerprint == fp), None)

    def add(self, role: Role, public_key: str, name: str = "") -> KeyEntry:
        """Authorize ``public_key`` for ``role`` (replacing any earlier entry of that key).

        The entry's name (a user's owner name) is ``name``, or one derived from the
        fingerprint: never the key's own comment, which whoever made the key chose.
        """
        key = parse_public_key(public_key)
        fp = fingerprint(key)
        name = name or fingerprint_name(fp)
        self.remove(fp)
        path = self._files[role]
        lines = _lines(path)
        lines.append(public_key_line(key, _safe_name(name)))
        _write_lines(path, lines)
        self._drop_pending(fp)
        return KeyEntry(role, _safe_name(name), fp, public_key_line(key))

    def remove(self, fp: str) -> bool:
        """Remove the key with fingerprint ``fp`` from every file (and a launcher's); True if it was anywhere."""
        found = self._drop_pending(fp) | self.withdraw_launched(fp)
        for path in self._files.values():
            if not path.exists():
                continue
            lines = _lines(path)
            kept = []
            for line in lines:
                try:
                    parsed = parse_authorized_line(line.strip())
                except UnicodeError:
                    parsed = None
                # A bad line (even one not UTF-8) stays as it was; options do not hide a key.
                same = parsed is not None and fingerprint(parsed[0]) == fp
                found |= same
                if not same:
                    kept.append(line)
            if len(kept) != len(lines):
                _write_lines(path, kept)
        return found

    # -- pending node keys -------------------------------------------------------------

    def pending(self) -> list[PendingKey]:
        path = self.state.pending_nodes
        if not path.exists():
            return []
        try:
            return [PendingKey(**item) for item in json.loads(path.read_text())]
        except (ValueError, TypeError):
            return []

    def note_refused(self, key: asyncssh.SSHKey, address: str) -> None:
        """Record a refused node key so an operator can approve it."""
        fp = fingerprint(key)
        now = time.time()
        items = self.pending()
        for item in items:
            if item.fingerprint == fp:
                item.last_seen, item.address = now, address
                item.attempts += 1
                break
        else:
            items.append(PendingKey(fp, public_key_line(key), address, now, now))
        self._write_pending(items[-MAX_PENDING:])

    def approve(self, fp: str, name: str = "") -> KeyEntry:
        """Authorize a pending node key as a node."""
        item = next((p for p in self.pending() if p.fingerprint == fp), None)
        if item is None:
            raise KeyError_(f"no pending key with fingerprint {fp}")
        return self.add(Role.NODE, item.public_key, name)

    def _drop_pending(self, fp: str) -> bool:
        items = self.pending()
        kept = [p for p in items if p.fingerprint != fp]
        if len(kept) != len(items):
            self._write_pending(kept)
        return len(kept) != len(items)

    def _write_pending(self, items: list[PendingKey]) -> None:
        data = json.dumps([asdict(p) for p in items], indent=1).encode()
        write_private_file(self.state.pending_nodes, data)


def fingerprint_name(fp: str) -> str:
    """The name a key enrolled without one goes by: ``key-`` and the start of its fingerprint."""
    return _safe_name("key-" + fp.removeprefix("SHA256:")[:12])


def _safe_name(name: str) -> str:
    """A name that fits in an authorized_keys comment: one token, printable."""
    cleaned = "".join(c if c.isalnum() or c in "-_.@" else "-" for c in name.strip())
    return cleaned[:64] or "unnamed"


def initialize(state: StateDir) -> None:
    """Create the state folder and its keys on first start.

    The operator's key is authorized as an operator and the local-node key as a node
    when they are created; removing them later is the operator's choice and sticks.
    """
    make_private_dir(state.root)
    ensure_keypair(state.host_key, "chainconsole-host")
    registry = KeyRegistry(state)
    for path, role, name in (
        (state.operator_key, Role.OPERATOR, "operator"),
        (state.node_key, Role.NODE, "local"),
    ):
        if not path.exists():
            key = ensure_keypair(path, f"chainconsole-{name}")
            registry.add(role, public_key_line(key), name)
    for path in (state.authorized_nodes, state.authorized_users, state.authorized_operators,
                 state.authorized_observers):
        if not path.exists():
            write_private_file(path, b"")  # there to be edited, like ~/.ssh/authorized_keys
