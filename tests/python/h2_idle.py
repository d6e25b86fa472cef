#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge) client that watches how the server ends an idle connection.

    h2_idle.py PORT [--path P ...] [--wait S] [--timeout S]

Opens one connection and sends a GET for each `--path` on it in turn, each once the previous
response has ended; then sends nothing more and waits at most `--wait` seconds (default 5) for the
server to end the connection. Prints one JSON object:

    {"events": ["response 1 200", "end 1", "goaway 0 1", "ping", "eof"], "closed": "eof"}

Events, in the order they happened:

    response ID STATUS   the response head of stream ID arrived
    end ID               stream ID ended (END_STREAM)
    reset ID CODE        the server reset stream ID
    goaway CODE LAST     the server sent GOAWAY with this error code and last stream id
    ping                 the server sent a PING (acknowledged at once)
    eof | reset          the server closed the connection (FIN, or RST)

`closed` is `eof`, `reset`, or null when the connection was still open after `--wait`, or
`--timeout` (default 20) passed before the responses ended.

GOAWAY and PING frames are handled here rather than by python-h2: after a GOAWAY, h2 treats any
further frame as a protocol error, and a server shutting down gracefully sends a PING after its
first GOAWAY and waits for the acknowledgement before it sends the last one and closes.
"""

import argparse
import json
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events

GOAWAY = 0x7
PING = 0x6
ACK = 0x1


class Client:
    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.buffer = b""
        self.events = []
        self.ended = set()
        self.closed = None

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def read(self, until):
        """Reads once, at most until `until` (time.monotonic()); False when nothing came."""
        left = until - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = None
        if not data:
            self.closed = "reset" if data is None else "eof"
            self.events.append(self.closed)
            return False
        self.buffer += data
        self.frames()
        return True

    def frames(self):
        """Handles every complete frame in the buffer."""
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            frame, self.buffer = self.buffer[: 9 + length], self.buffer[9 + length :]
            kind, flags = frame[3], frame[4]
            payload = frame[9:]
            if kind == GOAWAY:
                last, code = struct.unpack(">II", payload[:8])
                self.events.append(f"goaway {code} {last & 0x7FFFFFFF}")
            elif kind == PING and not flags & ACK:
                self.events.append("ping")
                ack = struct.pack(">I", 8)[1:] + bytes([PING, ACK]) + bytes(4) + payload
                try:
                    self.sock.sendall(ack)
                except OSError:
                    pass  # closed meanwhile: the next read says how
            elif kind != PING:
                self.feed(frame)

    def feed(self, frame):
        for event in self.conn.receive_data(frame):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(":status")
                self.events.append(f"response {event.stream_id} {status}")
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.events.append(f"end {event.stream_id}")
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.events.append(f"reset {event.stream_id} {int(event.error_code)}")
                self.ended.add(event.stream_id)
        self.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--wait", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()

    client = Client(args.port, args.timeout)
    deadline = time.monotonic() + args.timeout
    answered = True
    for path in args.path:
        stream_id = client.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "idle.test"),
            (":path", path),
        ]
        client.conn.send_headers(stream_id, headers, end_stream=True)
        client.flush()
        while stream_id not in client.ended and client.closed is None:
            if not client.read(deadline) and client.closed is None:
                break
        if stream_id not in client.ended:
            answered = False
            break
    if answered and client.closed is None:
        until = time.monotonic() + args.wait
        while client.closed is None and time.monotonic() < until:
            client.read(until)
    print(json.dumps({"events": client.events, "closed": client.closed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
