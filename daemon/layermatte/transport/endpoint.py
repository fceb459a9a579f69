"""Which daemon a client talks to: flags, then the environment, then the user's
own daemon. Standard library only (no grpc): `layermatte pipe`'s framed path
needs it before, and often instead of, the gRPC client."""
from __future__ import annotations

import os
from pathlib import Path

from ..system import platforms


def resolve_address(socket: str | os.PathLike | None = None, address: str | None = None) -> str:
    """--socket/--address, else LAYERMATTE_SOCKET/LAYERMATTE_ADDRESS, else the user's
    own daemon (platforms.default_endpoint: the unix socket, or on Windows the TCP
    address the daemon published; "" when none is published yet)."""
    if address:
        return address
    if socket:
        return f"unix:{Path(socket).absolute()}"
    if os.environ.get("LAYERMATTE_ADDRESS"):
        return os.environ["LAYERMATTE_ADDRESS"]
    if os.environ.get("LAYERMATTE_SOCKET"):
        return f"unix:{Path(os.environ['LAYERMATTE_SOCKET']).absolute()}"
    return platforms.default_endpoint().address


def default_token(address: str) -> str | None:
    """LAYERMATTE_TOKEN, else the token of the user's own TCP daemon (Windows)."""
    if os.environ.get("LAYERMATTE_TOKEN"):
        return os.environ["LAYERMATTE_TOKEN"]
    own = platforms.default_endpoint()
    if address and address == own.address:
        return own.token()
    return None
