"""A small HTTP load generator for the OCSP and CRL rows: a fixed number of keep-alive
connections driven by one thread (selectors), each sending its next request as soon as
the previous answer is complete. It reports the rate, latency percentiles and its own
CPU time (the load it puts on the same machine). Requests are made before the clock
starts; a server that closes the connection (HTTP/1.0, Connection: close) is reconnected.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    done: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, every answer
    cpu_seconds: float = 0.0  # the generator's own
    errors: int = 0  # answers other than 200 or rejected by `check`
    reconnects: int = 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def post(path: str, host: str, body: bytes, ctype: str = "application/ocsp-request") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


class _Conn:
    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.sock = socket.create_connection(addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sent_at = 0.0
        self.index = 0

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = socket.create_connection(self.addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""


def _complete(buf: bytes) -> tuple[int, bytes, bool, int] | None:
    """(status, body, server closes, bytes used) of the first whole response in `buf`."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").lower()
    length = 0
    for line in head.split("\r\n")[1:]:
        if line.startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if len(buf) < end + 4 + length:
        return None
    status = int(head.split(" ", 2)[1])
    closes = head.startswith("http/1.0") or "connection: close" in head
    return status, buf[end + 4 : end + 4 + length], closes, end + 4 + length


def run_load(
    addr: tuple[str, int],
    requests: Sequence[bytes],
    *,
    connections: int = 2,
    seconds: float = 5.0,
    check: Callable[[int, bytes], bool] | None = None,
    warmup: float = 0.5,
) -> LoadResult:
    """Send `requests` round robin over `connections` for `seconds` (after `warmup`)."""
    sel = selectors.DefaultSelector()
    conns = [_Conn(addr) for _ in range(connections)]
    n = len(requests)
    counter = 0
    result = LoadResult(0, 0.0)
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    cpu0 = 0.0
    measuring = False

    def send(c: _Conn) -> None:
        nonlocal counter
        c.index = counter % n
        counter += 1
        c.sent_at = time.perf_counter()
        c.sock.sendall(requests[c.index])

    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
        send(c)
    while True:
        now = time.perf_counter()
        if not measuring and now >= t_measure:
            measuring, cpu0 = True, time.process_time()
            result = LoadResult(0, 0.0, reconnects=result.reconnects)
        if now >= t_end:
            break
        for key, _ in sel.select(timeout=1.0):
            c: _Conn = key.data
            data = c.sock.recv(262144)
            if not data:  # closed before an answer
                sel.unregister(c.sock)
                c.reconnect()
                result.reconnects += 1
                sel.register(c.sock, selectors.EVENT_READ, c)
                send(c)
                continue
            c.buf += data
            got = _complete(c.buf)
            if got is None:
                continue
            status, body, closes, used = got
            c.buf = c.buf[used:]
            if measuring:
                result.latencies.append(time.perf_counter() - c.sent_at)
                result.done += 1
                if status != 200 or (check is not None and not check(c.index, body)):
                    result.errors += 1
            if closes:
                sel.unregister(c.sock)
                c.reconnect()
                result.reconnects += 1
                sel.register(c.sock, selectors.EVENT_READ, c)
            send(c)
    result.seconds = time.perf_counter() - t_measure
    result.cpu_seconds = time.process_time() - cpu0
    for c in conns:
        sel.unregister(c.sock)
        c.sock.close()
    return result
