#!/usr/bin/env python3
"""An aiohttp server (HTTP/1.1) for ringmesh's third-party tests.

Binds 127.0.0.1:0, prints `listening PORT`, then one event line per request head, printed before
the handler reads any of the body (flushed at once):

    request METHOD PATH

Paths:

    /early/CODE    answers CODE (403, 413, ...) with body `early CODE` without reading the request
                   body; aiohttp then keeps the connection open and discards the rest of the body
                   (its lingering close), as it does for any handler that ignores a body
    /cookies       JSON: {"cookie_headers": every Cookie field as received, "cookies": the cookies
                   aiohttp parsed from them}
    /upload        reads the whole body; JSON: {"bytes": N, "sha256": "...", "expect": the Expect
                   field or null}
    /bytes/N       N bytes (b"0123456789" repeated)
"""

import hashlib
import json
import socket

from aiohttp import web


def emit(*parts):
    print(*parts, flush=True)


@web.middleware
async def announce(request, handler):
    emit("request", request.method, request.path)
    return await handler(request)


async def early(request):
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"early {code}")


async def cookies(request):
    return web.json_response(
        {
            "cookie_headers": request.headers.getall("Cookie", []),
            "cookies": dict(request.cookies),
        }
    )


async def upload(request):
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {"bytes": size, "sha256": digest.hexdigest(), "expect": request.headers.get("Expect")}
    )


async def download(request):
    n = int(request.match_info["n"])
    unit = b"0123456789"
    return web.Response(body=(unit * (n // len(unit) + 1))[:n])


def main():
    app = web.Application(middlewares=[announce], client_max_size=1 << 30)
    app.router.add_route("*", "/early/{code}", early)
    app.router.add_route("*", "/cookies", cookies)
    app.router.add_route("*", "/upload", upload)
    app.router.add_route("*", "/bytes/{n}", download)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    emit("listening", sock.getsockname()[1])
    web.run_app(app, sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
