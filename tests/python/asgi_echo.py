#!/usr/bin/env python3
"""An ASGI app served by a real ASGI server, for ringmesh's third-party tests.

    asgi_echo.py uvicorn      uvicorn with its h11 HTTP/1.1 implementation (`--http h11`)
    asgi_echo.py hypercorn    hypercorn, which also serves h2c with prior knowledge

The server is given a socket bound to 127.0.0.1:0 and listening; the script prints `listening PORT`
and then one event line per thing the app saw (flushed at once):

    request METHOD PATH VERSION  a request head arrived (VERSION: 1.1 or 2)
    done PATH BYTES              the request body ended after BYTES bytes and the answer is complete
    waiting PATH BYTES           /hang read its whole body (BYTES bytes) and now answers nothing
    disconnect PATH BYTES        the connection was closed under the request, after BYTES body bytes

What a request gets depends on its path:

    /echo    the response head at once (200, no length: chunked in HTTP/1.1), then each request body
             chunk sent back as soon as it arrives, while the client is still uploading
    /hang    the body is read, then nothing is ever answered: the app waits for the disconnect
    other    the body is read, then 200 `ok`
"""

import asyncio
import socket
import sys


def emit(*parts):
    print(*parts, flush=True)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    emit("request", scope["method"], path, scope["http_version"])
    received = 0
    if path == "/echo":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            emit("disconnect", path, received)
            return
        chunk = message.get("body", b"")
        received += len(chunk)
        if path == "/echo" and chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not message.get("more_body", False):
            break
    if path == "/hang":
        emit("waiting", path, received)
        # Never answer: the next message can only be the disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass
        emit("disconnect", path, received)
        return
    if path == "/echo":
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
    emit("done", path, received)


def listening_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def serve_uvicorn(sock):
    import uvicorn

    config = uvicorn.Config(
        app, http="h11", lifespan="off", log_level="warning", access_log=False
    )
    emit("listening", sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])


def serve_hypercorn(sock):
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    emit("listening", sock.getsockname()[1])
    asyncio.run(serve(app, config))


def main():
    server = sys.argv[1] if len(sys.argv) > 1 else ""
    sock = listening_socket()
    if server == "uvicorn":
        serve_uvicorn(sock)
    elif server == "hypercorn":
        serve_hypercorn(sock)
    else:
        sys.exit(f"usage: {sys.argv[0]} uvicorn|hypercorn")


if __name__ == "__main__":
    main()
