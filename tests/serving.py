"""What the serve tests share: multipart fields and a real server on a loopback port (the tiny bundle's recognizer
is conftest's ``tiny`` fixture)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The server answers its own host names only (not the test client's "testserver").
LOCAL = "http://127.0.0.1:8000"


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` fields of (name, bytes) pairs."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


@contextmanager
def running_server(app, start_timeout: float = 60.0) -> Iterator[tuple[str, int]]:
    """``app`` served by uvicorn in a thread on a free loopback port: (host, port); stopped on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()
