"""Network addresses as people type them: ``HOST:PORT``, ``PORT`` or ``[v6]:PORT``.

One rule for every address chainconsole reads (``--listen``, ``--connect``, the node's
upstreams): the port is 1 to 65535, and 0 is allowed only where it means "any free port",
an address to listen on.
"""

from __future__ import annotations

from protocol.errors import ChainconsoleError

DEFAULT_HOST = "127.0.0.1"
MAX_PORT = 65535


class AddressError(ChainconsoleError, ValueError):
    """Text that is not ``HOST:PORT``, or a port out of range."""


def parse_address(text: str, default_host: str = DEFAULT_HOST, *, listening: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``, or ``[v6]:PORT``) → (host, port); AddressError if not.

    With ``listening`` the port may be 0: the system picks a free one.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = default_host, port
    try:
        number = int(port, 10)
    except ValueError:
        raise AddressError(f"{text!r} is not HOST:PORT") from None
    lowest = 0 if listening else 1
    if not lowest <= number <= MAX_PORT:
        raise AddressError(f"port {number} out of range ({lowest} to {MAX_PORT})")
    return host.strip("[]") or default_host, number
