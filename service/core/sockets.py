"""One listening socket per worker process (SO_REUSEPORT), so the kernel spreads connections over the workers.

uvicorn's process manager binds one socket and every worker accepts on it: whichever worker wakes first takes the
connection, and a burst of long-lived keep-alive connections (a load balancer's pool, a benchmark's) can land
mostly on one worker, which then serves most of the traffic while the other idles (measured at 100K items,
2 workers, 64 connections: 274 req/s at 1.3 cores of CPU, against 592 req/s when they split evenly). With
SO_REUSEPORT each worker listens on its own socket bound to the same address, and the kernel assigns each new
connection to one of them by a hash of its addresses: an even split on average, and a worker that is still
loading its bundle (not listening yet) is given none.

The cost: connections waiting in a worker's accept queue when that worker dies are reset (with one shared socket
another worker would take them); uvicorn restarts the worker and the next connections go to it.

Against uvicorn's one shared socket (RECO_REUSE_PORT=false), `python -m benchmarks.mechanisms --only "2 workers,
SO_REUSEPORT" "2 workers, one shared socket" --rounds 4`, 100K items, 2 workers, the 2-core VM, 2026-12-07,
medians of 4 interleaved rounds: c=16 853 vs 577 req/s (the shared socket's split went uneven in three rounds of
four: 484-694 req/s), p99 33 vs 43 ms; c=64 938 vs 977 req/s, p99 110 vs 111 ms: kept.
"""

from __future__ import annotations

import socket
from typing import Any


def bind_reuse_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class ReusePortSockets(list[socket.socket]):
    """What uvicorn's process manager (`uvicorn.supervisors.Multiprocess`) takes as its list of sockets. Made in the
    parent, it holds a socket bound to (host, port), never listened on (it receives no connection; it reserves
    the port and resolves port 0). Each worker process the manager starts, restarts included, receives it
    pickled, as (host, port): unpickled there, it binds that worker's own socket, on which uvicorn listens."""

    def __init__(self, host: str, port: int) -> None:
        sock = bind_reuse_port(host, port)
        super().__init__([sock])
        self.host = host
        self.port = int(sock.getsockname()[1])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.host, self.port))
