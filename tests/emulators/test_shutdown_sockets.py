"""Stopping an emulator while clients keep connecting leaves no socket to the garbage collector.

On Python 3.11 a socket accepted in a server's last moments gets a transport that `Server.close()` no
longer accepts; unless the server stops accepting first, that socket is closed only by the garbage
collector, and the ResourceWarning fails whichever test happens to run then (CI saw exactly that).
"""

from __future__ import annotations

import gc
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

ROUNDS = 8


def _hammer(port: int, stop: threading.Event) -> None:
    """Open connections as fast as possible (and never send a byte) until `stop`."""
    opened: list[socket.socket] = []
    while not stop.is_set():
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            time.sleep(0.0005)
    for sock in opened:
        sock.close()


def _mongodb() -> AbstractContextManager[Any]:
    from emulators.mongodb import run_in_thread

    return run_in_thread(host="127.0.0.1", port=0, replset="rs0")


def _ably() -> AbstractContextManager[Any]:
    from emulators.ably import run_in_thread

    return run_in_thread(host="127.0.0.1", port=0, keys=["app.key:secret"])


@pytest.fixture
def resource_warnings() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield caught


@pytest.mark.parametrize("start", [_mongodb, _ably], ids=["mongodb", "ably"])
def test_stopping_under_a_connection_storm_closes_every_accepted_socket(
    start: Callable[[], AbstractContextManager[Any]], resource_warnings: list[warnings.WarningMessage]
) -> None:
    for _ in range(ROUNDS):
        stop = threading.Event()
        with start() as server:
            threads = [threading.Thread(target=_hammer, args=(server.port, stop)) for _ in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(0.03)
        stop.set()
        for thread in threads:
            thread.join(10)
        gc.collect()
    leaked = [str(w.message) for w in resource_warnings if issubclass(w.category, ResourceWarning)]
    assert leaked == []
