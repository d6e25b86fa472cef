#!/usr/bin/env python3
"""A test upstream speaking HTTP/2 (h2c, prior knowledge) and HTTP/1.1 on one port.

ringmesh's black-box tests start it, read `listening PORT` from its standard output, and count
the event lines it prints after that (one per line, flushed at once):

    conn C                      connection C accepted (0, 1, ...), protocol not yet known
    stream C ID METHOD PATH     a request on connection C (ID is the HTTP/2 stream id, 0 for HTTP/1.1)
    goaway C LAST               GOAWAY(NO_ERROR) sent on C; streams above LAST are left unprocessed
    refused C ID                a stream above LAST arrived and was never answered
    reset C ID                  the client reset stream ID
    close C streams=N max=M     C ended after N requests, at most M of them at once
    received C ID PROTO METHOD PATH AUTHORITY BODY_LEN GRPC_TIMEOUT
                                a request ended (its whole body arrived); PROTO is HTTP/2 or
                                HTTP/1.1, AUTHORITY is :authority or Host, `-` for a missing
                                value
    refused-stream C ID         /refuse-if-reused: the stream was reset with REFUSED_STREAM
    dropped C ID                /close-if-reused: the TCP connection was closed under the request
    trickle-stopped C ID SENT   /trickle: the client went away after SENT body bytes
    trickle-done C ID           /trickle: the whole body was sent
    stall-gone C ID             /stall: the client went away (closed, or reset the stream)

What a request gets depends on its path (the query string is ignored; `/headers` reports it):

    /echo          after the request ends: its body back; request trailers echoed as response
                   trailers named `x-echo-<name>`, plus `x-upstream-trailer: end`
    /stream        HTTP/2 only: response headers at once, then each DATA chunk echoed as it arrives
    /headers       after the request ends: JSON with method, path, authority, headers, trailers,
                   body length and SHA-256, protocol
    /delay/MS      `ok` after MS milliseconds
    /bytes/N       N bytes (b"0123456789" repeated)
    /status/CODE   that status, body `status CODE`
    /drip          HTTP/1.1 only: a chunked body's first chunk, then nothing; prints
                   `gone C T` (T: time.monotonic()) when the client closes the connection
    /hold          nothing, ever (the request waits until the client gives up)
    /trickle/N/MS  the response head with `content-length: N` at once, then the body one byte
                   every MS milliseconds
    /stall/N/K     the response head with `content-length: N` and the first K body bytes at
                   once, then nothing until the client goes away (a response quiet mid-body)
    /refuse-if-reused
                   HTTP/2: `ok` on a connection's first stream; any later stream on the same
                   connection is reset with REFUSED_STREAM, unprocessed (a stale pooled
                   connection whose server refuses new work)
    /close-if-reused
                   `ok` on a connection's first request; when a later request arrives on the
                   same connection, the TCP connection is closed without an answer (a stale
                   pooled connection whose server went away)
    /flaky/N/CODE/KEY
                   the first N requests with this KEY (counted across connections) get CODE,
                   later ones 200; the body is `CODE try T attempt A` (T: this KEY's count, A:
                   the request's `x-envoy-attempt-count`, `-` without one)
    /slow-first/N/MS/KEY
                   the first N requests with this KEY are answered `ok` after MS milliseconds,
                   later ones at once
    /reset-first/N/KEY
                   the first N requests with this KEY get no answer: HTTP/2 resets the stream
                   (INTERNAL_ERROR), HTTP/1.1 closes the connection; later ones `ok`
    /grpc-flaky/N/KEY
                   gRPC, trailers-only: the first N requests with this KEY get `grpc-status: 14`
                   (UNAVAILABLE), later ones `grpc-status: 0`, under HTTP 200
    /fail-on/NAME/CODE
                   CODE when this server's `--name` is NAME, else `ok from NAME`
    anything else  `ok`

Every response carries `x-upstream: NAME` (`--name`) and `x-upstream-conn: C`.

`--goaway-after N`: on each HTTP/2 connection, when stream N+1 opens, send GOAWAY(NO_ERROR) whose
last stream is the N-th; finish the first N, never answer the rest, then close the connection. The
stream that triggered the GOAWAY is always one the upstream did not process, so a client that
retries unprocessed streams is certain to be exercised.
"""

import argparse
import asyncio
import hashlib
import json
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def emit(*parts):
    print(*parts, flush=True)


# Requests seen per KEY of the /flaky, /slow-first, /reset-first and /grpc-flaky paths.
TRIES = {}


def tries(path):
    """Counts one more request on a counted path; returns its count."""
    TRIES[path] = TRIES.get(path, 0) + 1
    return TRIES[path]


def reset_first(path):
    """Whether this request to /reset-first/N/KEY goes unanswered."""
    if not path.startswith("/reset-first/"):
        return False
    return tries(path) <= int(path.split("/")[2])


def grpc_flaky(path):
    """The grpc-status for /grpc-flaky/N/KEY, None for other paths."""
    if not path.startswith("/grpc-flaky/"):
        return None
    return "14" if tries(path) <= int(path.split("/")[2]) else "0"


def body_for(path, name="", attempt=None):
    """The status and body of a simple path, or None for the special ones."""
    if path.startswith("/flaky/"):
        n, code = (int(part) for part in path.split("/")[2:4])
        count = tries(path)
        status = code if count <= n else 200
        return status, f"{status} try {count} attempt {attempt or '-'}".encode()
    if path.startswith("/fail-on/"):
        who, code = path.split("/")[2], int(path.split("/")[3])
        if who == name:
            return code, f"status {code} from {name}".encode()
        return 200, f"ok from {name}".encode()
    if path.startswith("/bytes/"):
        n = int(path.split("/")[2])
        unit = b"0123456789"
        return 200, (unit * (n // len(unit) + 1))[:n]
    if path.startswith("/status/"):
        code = int(path.split("/")[2])
        return code, f"status {code}".encode()
    return 200, b"ok"


def delay_of(path):
    if path.startswith("/delay/"):
        return int(path.split("/")[2]) / 1000.0
    if path.startswith("/slow-first/"):
        n, ms = (int(part) for part in path.split("/")[2:4])
        return ms / 1000.0 if tries(path) <= n else 0.0
    return 0.0


def emit_received(conn_id, stream_id, proto, method, target, authority, body_len, grpc_timeout):
    emit(
        "received",
        conn_id,
        stream_id,
        proto,
        method,
        target,
        authority or "-",
        body_len,
        grpc_timeout or "-",
    )


def describe(method, path, authority, headers, trailers, body, proto):
    return json.dumps(
        {
            "method": method,
            "path": path,
            "authority": authority,
            "headers": headers,
            "trailers": trailers,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "protocol": proto,
        }
    ).encode()


class Server:
    def __init__(self, name, goaway_after):
        self.name = name
        self.goaway_after = goaway_after
        self.connections = 0

    async def handle(self, reader, writer):
        conn_id = self.connections
        self.connections += 1
        emit("conn", conn_id)
        stats = {"streams": 0, "active": 0, "max": 0}
        try:
            first = await reader.readexactly(len(PREFACE))
        except (asyncio.IncompleteReadError, ConnectionError):
            emit("close", conn_id, "streams=0", "max=0")
            writer.close()
            return
        try:
            if first == PREFACE:
                await H2Conn(self, conn_id, reader, writer, stats).run()
            else:
                await H1Conn(self, conn_id, reader, writer, stats, first).run()
        except (ConnectionError, asyncio.IncompleteReadError, h2.exceptions.ProtocolError):
            pass
        finally:
            emit("close", conn_id, f"streams={stats['streams']}", f"max={stats['max']}")
            try:
                writer.close()
            except Exception:
                pass


class Stream:
    def __init__(self, stream_id, headers):
        self.id = stream_id
        self.headers = headers
        self.body = bytearray()
        self.trailers = []
        self.ended = asyncio.Event()
        self.window = asyncio.Event()
        self.chunks = asyncio.Queue()


class H2Conn:
    def __init__(self, server, conn_id, reader, writer, stats):
        self.server = server
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.stats = stats
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.streams = {}
        self.opened = []
        self.last_processed = None
        self.closing = False
        self.drop_now = False
        self.tasks = set()

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closing:
            self.writer.write(data)

    async def run(self):
        self.conn.initiate_connection()
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            }
        )
        self.conn.receive_data(PREFACE)
        self.conn.increment_flow_control_window(1 << 24)
        self.flush()
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            for event in self.conn.receive_data(data):
                self.on_event(event)
                if self.drop_now:
                    # Gone without a word: no GOAWAY, no answer, just the TCP connection closed.
                    self.closing = True
                    self.writer.transport.abort()
                    return
            self.flush()
            await self.writer.drain()
            if self.last_processed is not None and self.stats["active"] == 0:
                await self.close_gracefully()
                return

    async def close_gracefully(self):
        """Every processed stream is done after a GOAWAY: half-close, then read (and drop) what
        the client still sends until it closes too. Closing with unread bytes would send a TCP
        RST, which can destroy responses the client has not read yet."""
        self.flush()
        await self.writer.drain()
        if not self.closing:
            self.closing = True
            self.writer.write_eof()
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout=10):
                pass
        except (asyncio.TimeoutError, ConnectionError):
            pass

    def refused(self, stream_id):
        return self.last_processed is not None and stream_id > self.last_processed

    def on_event(self, event):
        if isinstance(event, h2.events.RequestReceived):
            self.opened.append(event.stream_id)
            if (
                self.server.goaway_after
                and self.last_processed is None
                and len(self.opened) > self.server.goaway_after
            ):
                self.last_processed = self.opened[self.server.goaway_after - 1]
                self.flush()
                frame = GoAwayFrame(0, last_stream_id=self.last_processed, error_code=0)
                self.writer.write(frame.serialize())
                emit("goaway", self.id, self.last_processed)
            if self.refused(event.stream_id):
                emit("refused", self.id, event.stream_id)
                return
            headers = dict(event.headers)
            path = headers.get(":path", "/").split("?", 1)[0]
            if path in ("/refuse-if-reused", "/close-if-reused") and self.stats["streams"] > 0:
                if path == "/refuse-if-reused":
                    self.conn.reset_stream(
                        event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM
                    )
                    emit("refused-stream", self.id, event.stream_id)
                else:
                    self.drop_now = True
                    emit("dropped", self.id, event.stream_id)
                return
            stream = Stream(event.stream_id, event.headers)
            self.streams[event.stream_id] = stream
            self.stats["streams"] += 1
            self.stats["active"] += 1
            self.stats["max"] = max(self.stats["max"], self.stats["active"])
            emit("stream", self.id, event.stream_id, headers.get(":method"), headers.get(":path"))
            if event.stream_ended is not None:
                stream.ended.set()
            task = asyncio.ensure_future(self.respond(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body.extend(event.data)
                stream.chunks.put_nowait(event.data)
                if event.stream_ended is not None:
                    stream.ended.set()
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = event.headers
                if event.stream_ended is not None:
                    stream.ended.set()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended.set()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                emit("reset", self.id, event.stream_id)
                self.stats["active"] -= 1
                stream.ended.set()
                stream.window.set()
                stream.chunks.put_nowait(None)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in self.streams.values():
                    stream.window.set()
            elif event.stream_id in self.streams:
                self.streams[event.stream_id].window.set()

    def gone(self, stream):
        return self.streams.get(stream.id) is not stream

    async def send_body(self, stream, data, end):
        view = memoryview(data)
        while view and not self.gone(stream):
            window = min(
                self.conn.local_flow_control_window(stream.id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                stream.window.clear()
                await stream.window.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream.id, bytes(chunk), end_stream=end and not view)
            self.flush()
            await self.writer.drain()
        if end and not data and not self.gone(stream):
            self.conn.end_stream(stream.id)
            self.flush()

    def base_headers(self, status):
        return [
            (":status", str(status)),
            ("x-upstream", self.server.name),
            ("x-upstream-conn", str(self.id)),
        ]

    async def respond(self, stream):
        try:
            await self.serve(stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass
        finally:
            if self.streams.pop(stream.id, None) is not None:
                self.stats["active"] -= 1
            self.flush()
            if self.last_processed is not None and self.stats["active"] == 0 and not self.closing:
                self.closing = True
                # Half-close; the reading loop sees the client's end and returns.
                self.writer.write_eof()

    async def trickle(self, stream, path):
        n, ms = (int(part) for part in path.split("/")[2:4])
        headers = self.base_headers(200) + [("content-length", str(n))]
        self.conn.send_headers(stream.id, headers)
        self.flush()
        await self.writer.drain()
        for sent in range(n):
            await asyncio.sleep(ms / 1000.0)
            if self.gone(stream):
                emit("trickle-stopped", self.id, stream.id, sent)
                return
            await self.send_body(stream, b"t", end=sent == n - 1)
        emit("trickle-done", self.id, stream.id)

    async def serve(self, stream):
        headers = dict(stream.headers)
        method, target = headers.get(":method"), headers.get(":path", "/")
        path = target.split("?", 1)[0]
        if path == "/stream":
            self.conn.send_headers(stream.id, self.base_headers(200))
            self.flush()
            while True:
                chunk = await stream.chunks.get()
                if chunk is None or self.gone(stream):
                    break
                await self.send_body(stream, chunk, end=False)
                if stream.ended.is_set() and stream.chunks.empty():
                    break
            if not self.gone(stream):
                self.conn.send_headers(stream.id, [("x-upstream-trailer", "end")], end_stream=True)
            return
        if path.startswith("/trickle/"):
            await self.trickle(stream, path)
            return
        if path.startswith("/stall/"):
            n, k = (int(part) for part in path.split("/")[2:4])
            headers = self.base_headers(200) + [("content-length", str(n))]
            self.conn.send_headers(stream.id, headers)
            await self.send_body(stream, b"s" * k, end=False)
            self.flush()
            await self.writer.drain()
            while not self.gone(stream) and not self.writer.is_closing():
                await asyncio.sleep(0.05)
            emit("stall-gone", self.id, stream.id)
            return
        await stream.ended.wait()
        if self.gone(stream):
            return
        emit_received(
            self.id,
            stream.id,
            "HTTP/2",
            method,
            target,
            headers.get(":authority"),
            len(stream.body),
            headers.get("grpc-timeout"),
        )
        if path == "/hold":
            while not self.gone(stream):
                await asyncio.sleep(0.05)
            return
        if reset_first(path):
            self.conn.reset_stream(stream.id, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        grpc_status = grpc_flaky(path)
        if grpc_status is not None:
            response = self.base_headers(200) + [
                ("content-type", "application/grpc"),
                ("grpc-status", grpc_status),
                ("grpc-message", "flaky" if grpc_status != "0" else ""),
            ]
            self.conn.send_headers(stream.id, response, end_stream=True)
            self.flush()
            return
        delay = delay_of(path)
        if delay:
            await asyncio.sleep(delay)
            if self.gone(stream):
                return
        if path == "/echo":
            self.conn.send_headers(stream.id, self.base_headers(200))
            await self.send_body(stream, bytes(stream.body), end=False)
            if not self.gone(stream):
                trailers = [("x-echo-" + name, value) for name, value in stream.trailers]
                trailers.append(("x-upstream-trailer", "end"))
                self.conn.send_headers(stream.id, trailers, end_stream=True)
            return
        if path == "/headers":
            status = 200
            body = describe(
                method,
                target,
                headers.get(":authority"),
                [[n, v] for n, v in stream.headers if not n.startswith(":")],
                [[n, v] for n, v in stream.trailers],
                bytes(stream.body),
                "HTTP/2",
            )
        else:
            status, body = body_for(path, self.server.name, headers.get("x-envoy-attempt-count"))
        response = self.base_headers(status) + [("content-length", str(len(body)))]
        self.conn.send_headers(stream.id, response, end_stream=not body)
        if body:
            await self.send_body(stream, body, end=True)


class H1Conn:
    def __init__(self, server, conn_id, reader, writer, stats, first):
        self.server = server
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.stats = stats
        self.buffer = bytearray(first)

    async def read_line(self):
        while b"\r\n" not in self.buffer:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer.extend(data)
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return line.decode("latin-1")

    async def read_exact(self, n):
        while len(self.buffer) < n:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer.extend(data)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def read_fields(self):
        fields = []
        while True:
            line = await self.read_line()
            if not line:
                return fields
            name, _, value = line.partition(":")
            fields.append([name.strip().lower(), value.strip()])

    async def run(self):
        while True:
            try:
                request_line = await self.read_line()
            except ConnectionError:
                return
            method, target, _version = request_line.split(" ", 2)
            headers = await self.read_fields()
            named = {}
            for name, value in headers:
                named.setdefault(name, value)
            body = bytearray()
            trailers = []
            if named.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await self.read_line()).split(";")[0], 16)
                    if size == 0:
                        trailers = await self.read_fields()
                        break
                    body.extend(await self.read_exact(size))
                    await self.read_exact(2)
            elif "content-length" in named:
                body.extend(await self.read_exact(int(named["content-length"])))
            path = target.split("?", 1)[0]
            if path == "/close-if-reused" and self.stats["streams"] > 0:
                emit("dropped", self.id, 0)
                self.writer.transport.abort()
                return
            self.stats["streams"] += 1
            self.stats["max"] = max(self.stats["max"], 1)
            emit("stream", self.id, 0, method, target)
            emit_received(
                self.id,
                0,
                "HTTP/1.1",
                method,
                target,
                named.get("host"),
                len(body),
                named.get("grpc-timeout"),
            )
            if path == "/hold":
                # Never answer; notice when the client goes away.
                while await self.reader.read(65536):
                    pass
                return
            if reset_first(path):
                self.writer.transport.abort()
                return
            grpc_status = grpc_flaky(path)
            if grpc_status is not None:
                self.writer.write(
                    (
                        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                        f"grpc-status: {grpc_status}\r\ncontent-length: 0\r\n"
                        f"x-upstream: {self.server.name}\r\n\r\n"
                    ).encode()
                )
                await self.writer.drain()
                continue
            if path.startswith("/trickle/"):
                n, ms = (int(part) for part in path.split("/")[2:4])
                base = f"x-upstream: {self.server.name}\r\nx-upstream-conn: {self.id}\r\n"
                self.writer.write(
                    f"HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n{base}\r\n".encode()
                )
                await self.writer.drain()
                for sent in range(n):
                    await asyncio.sleep(ms / 1000.0)
                    try:
                        self.writer.write(b"t")
                        await self.writer.drain()
                    except ConnectionError:
                        emit("trickle-stopped", self.id, 0, sent)
                        raise
                    if self.writer.transport.is_closing():
                        emit("trickle-stopped", self.id, 0, sent)
                        return
                emit("trickle-done", self.id, 0)
                continue
            if path.startswith("/stall/"):
                n, k = (int(part) for part in path.split("/")[2:4])
                base = f"x-upstream: {self.server.name}\r\nx-upstream-conn: {self.id}\r\n"
                self.writer.write(
                    f"HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n{base}\r\n".encode() + b"s" * k
                )
                await self.writer.drain()
                try:
                    while await self.reader.read(65536):
                        pass
                except ConnectionError:
                    pass
                emit("stall-gone", self.id, 0)
                return
            delay = delay_of(path)
            if delay:
                await asyncio.sleep(delay)
            base = (
                f"x-upstream: {self.server.name}\r\nx-upstream-conn: {self.id}\r\n".encode()
            )
            if path == "/drip":
                # The start of a chunked body, then nothing until the client goes away.
                self.writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + base + b"\r\n5\r\nfirst\r\n"
                )
                await self.writer.drain()
                try:
                    data = await asyncio.wait_for(self.reader.read(65536), timeout=30)
                except asyncio.TimeoutError:
                    data = b"timeout"
                if not data:
                    emit("gone", self.id, time.monotonic())
                return
            if path == "/echo":
                out = bytearray(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + base + b"\r\n")
                if body:
                    out += b"%x\r\n" % len(body) + bytes(body) + b"\r\n"
                out += b"0\r\n"
                for name, value in trailers:
                    out += f"x-echo-{name}: {value}\r\n".encode()
                out += b"x-upstream-trailer: end\r\n\r\n"
                self.writer.write(bytes(out))
            else:
                if path == "/headers":
                    status = 200
                    payload = describe(
                        method, target, named.get("host"), headers, trailers, bytes(body), "HTTP/1.1"
                    )
                else:
                    status, payload = body_for(
                        path, self.server.name, named.get("x-envoy-attempt-count")
                    )
                head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(payload)}\r\n".encode()
                self.writer.write(head + base + b"\r\n" + payload)
            await self.writer.drain()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--goaway-after", type=int, default=0)
    args = parser.parse_args()
    server = Server(args.name, args.goaway_after)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=1024)
    emit("listening", listener.sockets[0].getsockname()[1])
    async with listener:
        await listener.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
