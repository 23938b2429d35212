"""Dask scheduler addresses: refused on the command line when malformed, and a one-line error
within the connect timeout when nothing (or no scheduler) answers there."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from harness import analyze_args

pytest.importorskip("distributed")


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("", "expected a scheduler address"),
        ("not-an-address", "has no host and port"),
        ("http://127.0.0.1:8787", "not a Dask scheduler address"),
        ("tcp://127.0.0.1:99999", "has no host and port"),
    ],
)
def test_malformed_addresses_are_refused_before_any_work(cli, project, address, needle) -> None:
    out = project["root"] / "out"
    cli.usage_error(analyze_args(project, out, "--scheduler", address), "--scheduler", needle)
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def web_server() -> Iterator[int]:
    """A port that answers every connection with HTTP 400."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 20)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_a_refused_port_fails_fast(cli, project) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    line = cli.fails(analyze_args(project, project["root"] / "out", "--scheduler", address),
                     "nothing listens on port")  # fmt: skip
    assert address in line
    assert time.monotonic() - t0 < 30  # not the client's own 30 s "Timed out"


def test_a_listener_that_never_answers_fails_within_the_timeout(cli, project, silent_listener):
    address = f"tcp://127.0.0.1:{silent_listener}"
    cli.fails(analyze_args(project, project["root"] / "out", "--scheduler", address),
              "did not answer as a Dask scheduler within 10 s")  # fmt: skip


def test_a_web_server_is_no_scheduler(cli, project, web_server) -> None:
    address = f"tcp://127.0.0.1:{web_server}"
    cli.fails(analyze_args(project, project["root"] / "out", "--scheduler", address),
              "not as a Dask scheduler")  # fmt: skip
