"""One parser and one port rule for every HOST:PORT chainconsole reads."""

from __future__ import annotations

import argparse

import pytest

from protocol.addresses import AddressError, parse_address
from protocol.errors import ChainconsoleError

GOOD = [
    ("example.org:8022", {}, ("example.org", 8022)),
    ("8022", {}, ("127.0.0.1", 8022)),
    (":8022", {}, ("127.0.0.1", 8022)),
    ("[::1]:22", {}, ("::1", 22)),
    ("10.0.0.1:65535", {}, ("10.0.0.1", 65535)),
    ("0.0.0.0:0", {"listening": True}, ("0.0.0.0", 0)),
    ("9000", {"default_host": "node1"}, ("node1", 9000)),
]

BAD = [
    ("host:0", {}, "port 0 out of range (1 to 65535)"),
    ("host:65536", {"listening": True}, "port 65536 out of range (0 to 65535)"),
    ("host:-1", {"listening": True}, "out of range"),
    ("host:http", {}, "'host:http' is not HOST:PORT"),
    ("", {}, "is not HOST:PORT"),
    ("host:", {}, "is not HOST:PORT"),
]


@pytest.mark.parametrize("text,options,expected", GOOD)
def test_addresses_parse(text: str, options: dict, expected: tuple[str, int]) -> None:
    assert parse_address(text, **options) == expected


@pytest.mark.parametrize("text,options,message", BAD)
def test_bad_addresses_say_why(text: str, options: dict, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_address(text, **options)


def test_an_address_error_is_a_user_mistake_the_cli_reports_in_one_line() -> None:
    assert issubclass(AddressError, ChainconsoleError) and issubclass(AddressError, ValueError)


def test_the_cli_and_the_node_share_the_rule() -> None:
    from console.cli.client import parse_address as client_parse
    from console.cli.main import build_parser

    assert client_parse is parse_address
    parser = build_parser()
    assert parser.parse_args(["serve", "--listen", "127.0.0.1:0"]).listen == ("127.0.0.1", 0)
    assert parser.parse_args(["node", "--connect", "h:9", "--listen", ":0"]).listen == ("127.0.0.1", 0)
    for argv in (["node", "--connect", "h:0"], ["serve", "--listen", "h:70000"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    node_parser = argparse.ArgumentParser()
    from nodes.cli import add_arguments
    add_arguments(node_parser)
    assert node_parser.parse_args(["--connect", "[::1]:8022"]).connect == [("::1", 8022)]
