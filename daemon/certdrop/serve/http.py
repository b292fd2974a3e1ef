"""HTTP for `certdrop serve`, with aiohttp on uvloop (the one module that imports them).

Each worker process runs one event loop: the routes below, answered by the objects of
`ServeRuntime` (serve/runtime.py), on the listening socket the supervisor
(serve/server.py) made and shares with the other workers. HTTP/1.0 and 1.1 clients
both (mod_ssl's OCSP client speaks 1.0, one request per connection).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import logging
import os
import signal
import socket
import urllib.parse
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web
from cryptography.x509 import ocsp

from ..errors import ServeError
from .balance import ConnectionBoard
from .ocsp import OcspAnswer
from .published import NAMES, Document
from .runtime import ServeRuntime

log = logging.getLogger("certdrop.serve")

KEEPALIVE_SECONDS = 30.0  # an idle keep-alive connection is closed after this
SHUTDOWN_SECONDS = 5.0  # requests in progress get this long to finish on SIGTERM
BALANCE_POLL_SECONDS = 0.02  # a worker holding more connections than another looks again
RETRY_AFTER = "60"  # a document not published yet: ask again in a minute
OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
OCSP_MAX_AGE = 60  # HTTP caches keep a GET answer this long at most: revocations show soon


def _http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)


def _not_modified(request: web.Request, doc: Document) -> bool:
    """RFC 9110 13.1.2 / 13.1.3: If-None-Match (weak comparison) takes precedence over
    If-Modified-Since."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or doc.etag in tags
    ims = request.headers.get("If-Modified-Since")
    if ims is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(ims)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    return doc.last_modified <= since


def _caching_headers(doc: Document, now: dt.datetime) -> dict[str, str]:
    age = doc.fresh_for(now)
    return {
        "ETag": doc.etag,
        "Last-Modified": _http_date(doc.last_modified),
        "Cache-Control": f"public, max-age={age}, no-transform",
        "Expires": _http_date(now + dt.timedelta(seconds=age)),  # for HTTP/1.0 caches
    }


def _document_response(
    request: web.Request, doc: Document, headers: dict[str, str]
) -> web.Response:
    if _not_modified(request, doc):
        return web.Response(status=304, headers=headers)
    return web.Response(body=doc.body, headers={**headers, "Content-Type": doc.media_type})


def _unavailable(reason: str) -> web.Response:
    return web.Response(status=503, text=reason + "\n", headers={"Retry-After": RETRY_AFTER})


def make_app(rt: ServeRuntime) -> web.Application:
    """The routes, answered by `rt`'s objects."""
    app = web.Application(client_max_size=rt.max_request_bytes)

    def document(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        # the caching headers depend on the document and the second only: made once a second
        made: list[tuple[Document, int, dict[str, str]]] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            now = rt.clock.now()
            try:
                doc = rt.files.get(name)
            except ServeError as exc:
                log.warning("GET /%s: %s", name, exc)
                return _unavailable(str(exc))
            second = int(now.timestamp())
            if made and made[0][0] is doc and made[0][1] == second:
                headers = made[0][2]
            else:
                # as of the second's end: max-age never reaches past nextUpdate in it
                headers = _caching_headers(doc, dt.datetime.fromtimestamp(second + 1, dt.UTC))
                made[:] = [(doc, second, headers)]
            return _document_response(request, doc, headers)

        return handler

    async def ocsp_post(request: web.Request) -> web.StreamResponse:
        ctype = request.headers.get("Content-Type", OCSP_REQUEST).split(";")[0].strip().lower()
        if ctype != OCSP_REQUEST:
            return web.Response(
                status=415, text=f"an OCSP request is sent as {OCSP_REQUEST}, not {ctype}\n"
            )
        body = await request.read()  # larger than client_max_size: 413
        return _ocsp_response(rt.ocsp.respond(body, rt.clock.now()), rt.clock.now(), cache=False)

    async def ocsp_get(request: web.Request) -> web.StreamResponse:
        # RFC 5019 5: GET {url}/{url-encoding of base64 encoding of the DER request}
        raw = request.rel_url.raw_path[len("/ocsp/") :]
        try:
            der = base64.b64decode(urllib.parse.unquote(raw), validate=True)
        except (binascii.Error, ValueError):
            der = b""  # not base64: answered as a malformed request
        now = rt.clock.now()
        return _ocsp_response(rt.ocsp.respond(der, now), now, cache=True)

    async def ca_document(request: web.Request) -> web.StreamResponse:
        # /cas/<id>/<name>: one CA of the state by its key id (a retiring CA's CRL)
        ident, name = request.match_info["ident"], request.match_info["name"]
        files = rt.files.of_ca(ident)
        if files is None or name not in NAMES:
            return web.Response(status=404, text="no such CA document here\n")
        now = rt.clock.now()
        try:
            doc = files.get(name)
        except ServeError as exc:
            log.warning("GET /cas/%s/%s: %s", ident, name, exc)
            return _unavailable(str(exc))
        return _document_response(request, doc, _caching_headers(doc, now))

    for name in NAMES:
        app.router.add_get(f"/{name}", document(name))
    app.router.add_get("/cas/{ident}/{name}", ca_document)
    app.router.add_post("/ocsp", ocsp_post)
    app.router.add_get("/ocsp/{request:.+}", ocsp_get)
    return app


def _ocsp_response(answer: OcspAnswer, now: dt.datetime, *, cache: bool) -> web.Response:
    """RFC 5019 6.2: a successful answer to a GET without nonce may be cached until
    shortly before its nextUpdate; anything else is for this request alone."""
    if answer.status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        log.debug("OCSP %s: %s", answer.status.name, answer.reason)
        if answer.status == ocsp.OCSPResponseStatus.TRY_LATER:
            log.warning("OCSP answered tryLater: %s", answer.reason)
    headers = {"Content-Type": OCSP_RESPONSE, "Cache-Control": "no-store"}
    if (
        cache
        and not answer.nonce
        and answer.produced_at is not None
        and answer.next_update is not None
    ):
        age = max(0, min(OCSP_MAX_AGE, int((answer.next_update - now).total_seconds())))
        headers.update(
            {
                "Cache-Control": f"max-age={age}, public, no-transform, must-revalidate",
                "Last-Modified": _http_date(answer.produced_at),
                "Expires": _http_date(answer.next_update),
                "ETag": '"' + hashlib.sha256(answer.body).hexdigest()[:32] + '"',
            }
        )
    return web.Response(body=answer.body, headers=headers)


# --- before the fork ----------------------------------------------------------------------------
WARM_ROUNDS = 20  # enough for the interpreter to specialise the request path's code


def warm_up(rt: ServeRuntime) -> None:
    """Requests to every route over a socket pair, answered by the app, in the supervisor
    before it forks: what aiohttp loads and caches on a first request is then shared by
    the workers instead of made in each."""
    logging.disable(logging.WARNING)  # the answers are for no one ("not published yet")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_exchange(rt))
    finally:
        logging.disable(logging.NOTSET)


async def _exchange(rt: ServeRuntime) -> None:
    app_runner = web.AppRunner(make_app(rt), access_log=None)
    await app_runner.setup()
    server = app_runner.server
    assert server is not None
    ours, theirs = socket.socketpair()
    try:
        await asyncio.get_running_loop().connect_accepted_socket(server, ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        head = "Host: localhost\r\n"
        asks = [f"GET /{name} HTTP/1.1\r\n{head}\r\n".encode() for name in NAMES]
        asks.append(
            f"POST /ocsp HTTP/1.1\r\n{head}Content-Type: {OCSP_REQUEST}\r\n"
            "Content-Length: 2\r\n\r\n\x30\x00".encode()
        )
        asks.append(f"GET /ocsp/MAA%3D HTTP/1.1\r\n{head}\r\n".encode())
        for _ in range(WARM_ROUNDS):
            for ask in asks:
                writer.write(ask)
                answer = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in answer.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
        writer.close()
    finally:
        ours.close()
        theirs.close()
        await app_runner.cleanup()


# --- one worker process -------------------------------------------------------------------------
def run_worker(
    sock: socket.socket,
    rt: ServeRuntime,
    board: ConnectionBoard,
    index: int,
    ready_fd: int,
    lifeline_fd: int,
) -> int:
    """Serve on `sock` until SIGTERM (or until the supervisor is gone: `lifeline_fd` reads
    end of file); one byte on `ready_fd` once accepting. The exit status."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_worker(sock, rt, board, index, ready_fd, lifeline_fd))


async def _worker(
    sock: socket.socket,
    rt: ServeRuntime,
    board: ConnectionBoard,
    index: int,
    ready_fd: int,
    lifeline_fd: int,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor's business
    loop.add_reader(lifeline_fd, stop.set)  # readable only at end of file: the supervisor died
    runner = web.AppRunner(
        make_app(rt),
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
        shutdown_timeout=SHUTDOWN_SECONDS,
    )
    await runner.setup()
    accepting = asyncio.create_task(_accept(sock, runner, board, index))
    os.write(ready_fd, bytes((index,)))
    os.close(ready_fd)
    await stop.wait()
    accepting.cancel()
    board.retire(index)
    await runner.cleanup()  # stops idle connections, lets requests in progress finish
    rt.close()
    return 0


async def _accept(
    sock: socket.socket, runner: web.AppRunner, board: ConnectionBoard, index: int
) -> None:
    """Take connections from the shared socket while this worker is among the least busy
    (serve/balance.py), and hand them to aiohttp."""
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None
    made, lost = server.connection_made, server.connection_lost
    # the connections still open: aiohttp's own list keeps a closed one until its handler
    # task ends, and a stale count lets the other worker take every new connection
    live: set[web.RequestHandler] = set()

    def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)
        live.add(handler)
        board.set(index, len(live))

    def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        lost(handler, exc)
        live.discard(handler)
        board.set(index, len(live))  # at once, not when this worker next accepts

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]
    while True:
        board.set(index, len(live))
        while not board.may_accept(index):
            await asyncio.sleep(BALANCE_POLL_SECONDS)
        try:
            conn, _addr = await loop.sock_accept(sock)
        except OSError as exc:  # out of file descriptors, say: keep serving the others
            log.error("cannot accept a connection: %s", exc)
            await asyncio.sleep(0.1)
            continue
        try:
            await loop.connect_accepted_socket(server, conn)
        except OSError as exc:
            log.debug("a connection ended before it was served: %s", exc)
            conn.close()
