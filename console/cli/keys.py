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


def run_keys(state: StateDir, args: argparse.Namespace) -> int:
    initialize(state)
    registry = KeyRegistry(state, report=lambda problem: print(f"chainconsole: warning: {problem}", file=sys.stderr))
    match args.keys_command:
        case "show":
            info = {
                "host_key": str(state.host_key), "host_key_pub": str(state.host_key_pub),
                "operator_key": str(state.operator_key), "operator_key_pub": str(state.operator_key) + ".pub",
                "node_key": str(state.node_key), "node_key_pub": str(state.node_key) + ".pub",
                "authorized_nodes": str(state.authorized_nodes), "authorized_users": str(state.authorized_users),
                "authorized_operators": str(state.authorized_operators),
                "authorized_observers": str(state.authorized_observers),
                "fingerprints": {
                    name: fingerprint(ensure_keypair(path, name))
                    for name, path in (("host_key", state.host_key), ("operator_key", state.operator_key),
                                       ("node_key", state.node_key))
                },
                "authorized": [
                    {"role": e.role.value, "name": e.name, "fingerprint": e.fingerprint} for e in registry.entries()
                ],
            }
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                for name in ("host_key", "operator_key", "node_key"):
                    print(f"{name:14} {info['fingerprints'][name]}  {info[name]}")
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
