"""``chainconsole keys …``: manage who may log in, on the state dir of this machine."""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path

from console.engine.keys import KeyError_, KeyRegistry, Role, ensure_keypair, fingerprint, initialize
from console.engine.statedir import StateDir
from protocol.errors import ExitStatus


def _pubkey_text(value: str) -> str:
    path = Path(value).expanduser()
    if len(value) < 4096 and path.is_file():
        return path.read_text()
    return value


KEY_LABELS = (
    ("host_key", "host key", "give this file to nodes and users: --host-key"),
    ("operator_key", "operator key", "the console's own key; its private half stays here"),
    ("node_key", "node key", "the key of the local nodes"),
)


def run_keys(state: StateDir, args: argparse.Namespace) -> int:
    if args.keys_command == "show" and not state.root.exists():
        # Looking must not create: on a fresh machine there is nothing to show yet.
        if args.json:
            print(json.dumps({**_paths(state), "fingerprints": {}, "authorized": [], "exists": False}, indent=2))
        else:
            print(f"no state folder at {state.root} yet: the first `chainconsole` or `chainconsole serve` "
                  "creates it and its keys")
        return ExitStatus.OK
    initialize(state)
    registry = KeyRegistry(state, report=lambda problem: print(f"chainconsole: warning: {problem}", file=sys.stderr))
    match args.keys_command:
        case "show":
            info = {
                **_paths(state),
                "fingerprints": {
                    name: fingerprint(ensure_keypair(path, name))
                    for name, path in (("host_key", state.host_key), ("operator_key", state.operator_key),
                                       ("node_key", state.node_key))
                },
                "authorized": [
                    {"role": e.role.value, "name": e.name, "fingerprint": e.fingerprint} for e in registry.entries()
                ],
            }
            info["exists"] = True
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                # Public halves only: these are the files a newcomer copies to other machines.
                for name, label, what in KEY_LABELS:
                    print(f"{label:14} {info['fingerprints'][name]}  {info[name + '_pub']}  ({what})")
                for entry in info["authorized"]:
                    print(f"{entry['role']:14} {entry['fingerprint']}  {entry['name']}")
            return ExitStatus.OK
        case "add-node" | "add-user" | "add-observer":
            role = {"add-node": Role.NODE, "add-observer": Role.OBSERVER}.get(
                args.keys_command, Role.OPERATOR if getattr(args, "operator", False) else Role.USER)
            entry = registry.add(role, _pubkey_text(args.pubkey), args.name)
            print(f"authorized {entry.name} as {role.value}: {entry.fingerprint}")
            return ExitStatus.OK
        case "pending":
            pending = registry.pending()
            if args.json:
                print(json.dumps([vars(p) for p in pending], indent=2))
            elif not pending:
                print("no pending node keys")
            for p in pending if not args.json else ():
                print(f"{p.fingerprint}  from {p.address}  {p.attempts} attempts")
            return ExitStatus.OK
        case "approve":
            entry = registry.approve(args.fingerprint, args.name)
            print(f"approved {entry.name} as node: {entry.fingerprint}")
            return ExitStatus.OK
        case "remove":
            if not registry.remove(args.fingerprint):
                raise KeyError_(f"no key with fingerprint {args.fingerprint}")
            print(f"removed {args.fingerprint}")
            return ExitStatus.OK
    raise AssertionError(args.keys_command)


def _paths(state: StateDir) -> dict[str, str]:
    """Where each key and authorized-keys file of the state folder is (or will be)."""
    return {
        "host_key": str(state.host_key), "host_key_pub": str(state.host_key_pub),
        "operator_key": str(state.operator_key), "operator_key_pub": str(state.operator_key) + ".pub",
        "node_key": str(state.node_key), "node_key_pub": str(state.node_key) + ".pub",
        "authorized_nodes": str(state.authorized_nodes), "authorized_users": str(state.authorized_users),
        "authorized_operators": str(state.authorized_operators),
        "authorized_observers": str(state.authorized_observers),
    }
