"""Loopback helpers shared by the local servers: a free port and polling with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Another process can still take it before our server binds it; callers that picked the port
    themselves retry with a new one when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(ready: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``ready`` until it returns True or ``timeout`` seconds have passed; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
