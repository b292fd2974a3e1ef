"""The HTTP layer's ceiling for the OCSP row: aiohttp on uvloop, as `certdrop serve` runs
it, answering every `POST /ocsp` with a constant body of an OCSP answer's size and doing
nothing else (no parsing, lookup or signature).

    python bench/http_ceiling.py PORT [WORKERS]

Like `certdrop serve`, one listening socket and WORKERS forked processes (default 2);
each worker holds one connection at a time, so the bench's two keep-alive connections
land one per worker, as certdrop's connection board places them. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import uvloop
from aiohttp import web

BODY = b"\x30" * 420  # about the size of a signed answer with a nonce (P-256 responder)


def _app() -> web.Application:
    async def ocsp(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=BODY,
            headers={"Content-Type": "application/ocsp-response", "Cache-Control": "no-store"},
        )

    app = web.Application()
    app.router.add_post("/ocsp", ocsp)
    return app


async def _worker(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.AppRunner(_app(), access_log=None)
    await runner.setup()
    server = runner.server
    assert server is not None
    closed = asyncio.Event()
    lost = server.connection_lost

    def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        lost(handler, exc)
        closed.set()

    server.connection_lost = connection_lost  # type: ignore[method-assign]

    async def serve() -> None:
        while True:  # one connection at a time: the board's placement of two
            conn, _ = await loop.sock_accept(sock)
            closed.clear()
            await loop.connect_accepted_socket(server, conn)
            await closed.wait()

    serving = asyncio.create_task(serve())
    await stop.wait()
    serving.cancel()
    await runner.cleanup()


def main() -> int:
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    sock = socket.create_server(("127.0.0.1", port), backlog=128)
    sock.setblocking(False)
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_worker(sock))
            os._exit(0)
        pids.append(pid)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
