#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge) client for ringmesh's black-box tests, on python-h2.

One request per run; prints one JSON object describing the response:

    {"status": 200, "headers": [[name, value], ...], "trailers": [...], "body_len": N,
     "body_sha256": "...", "body": "<first 4 KiB as text>", "reset": null | code,
     "goaway": null | code, "echo_rounds": N, "body_sent": N,
     "remote_settings": {"MAX_HEADER_LIST_SIZE": N, ...}}

`remote_settings` are the SETTINGS the server advertised (by name where h2 knows the code).
An upload stops early, without an error, once the response has ended or the stream was reset.

    h2_client.py PORT [--method M] [--path P] [--authority A] [--header NAME:VALUE ...]
                 [--body-size N | --body-hex HEX] [--body-pace-ms MS] [--trailer NAME:VALUE ...]
                 [--interactive ROUNDS] [--timeout S]

`--cancel-after-data` resets the stream (CANCEL) once the first response bytes arrived.
`--body-hex HEX` sends those bytes as the body (a gRPC frame, say). `--body-size N` sends N
deterministic bytes (byte i is i*7 mod 251) as the request body, in
16 KiB DATA frames, honouring flow control. `--body-pace-ms MS` sends the body one byte per DATA
frame instead, MS milliseconds apart, reading the response meanwhile (an upload that trickles).
`--interactive ROUNDS` talks to the upstream's `/stream` path: it sends a chunk, waits until that
chunk comes back, and only then sends the next one, which only works if both bodies are streamed
through the proxy, never buffered whole.
"""

import argparse
import hashlib
import json
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings


_CYCLE = bytes((i * 7) % 251 for i in range(251))
_SETTING_CODES = {int(code) for code in h2.settings.SettingCodes}


def pattern(n, offset=0):
    start = offset % 251
    return (_CYCLE * ((start + n) // 251 + 1))[start : start + n]


class Client:
    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.deadline = time.monotonic() + timeout
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 24)
        self.flush()
        self.result = {
            "status": None,
            "headers": [],
            "trailers": [],
            "body_len": 0,
            "reset": None,
            "goaway": None,
        }
        self.body = bytearray()
        self.body_sent = 0
        self.ended = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, stream_id):
        """Reads once and handles the events."""
        self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.result["status"] = int(dict(event.headers)[":status"])
                self.result["headers"] = [[n, v] for n, v in event.headers]
                if event.stream_ended is not None:
                    self.ended = True
            elif isinstance(event, h2.events.DataReceived):
                self.body.extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.result["trailers"] = [[n, v] for n, v in event.headers]
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.result["reset"] = int(event.error_code)
                self.ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.result["goaway"] = int(event.error_code)
                self.ended = True
        self.flush()

    def wait_reading(self, stream_id, seconds):
        """Handles what arrives for `seconds`, or until the response has ended."""
        until = time.monotonic() + seconds
        while not self.ended:
            left = until - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.sock], [], [], left)
            if readable:
                self.pump(stream_id)

    def send_paced(self, stream_id, data, end, pace):
        """Sends `data` one byte per DATA frame, `pace` seconds apart."""
        for i in range(len(data)):
            if self.ended:
                return
            if i:
                self.wait_reading(stream_id, pace)
                if self.ended:
                    return
            self.conn.send_data(stream_id, data[i : i + 1], end_stream=end and i == len(data) - 1)
            self.flush()
            self.body_sent += 1

    def send_body(self, stream_id, data, end):
        view = memoryview(data)
        # An upload stops once the response has ended or the stream was reset: an early answer
        # (a 403 or 413 before the whole body was sent) is final.
        while view and not self.ended:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.pump(stream_id)
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=end and not view)
            self.flush()
            self.body_sent += len(chunk)
        if end and not data and not self.ended:
            self.conn.end_stream(stream_id)
            self.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/")
    parser.add_argument("--authority", default=None)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--trailer", action="append", default=[])
    parser.add_argument("--body-size", type=int, default=0)
    parser.add_argument("--body-hex", default="")
    parser.add_argument("--body-pace-ms", type=float, default=0.0)
    parser.add_argument("--interactive", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--cancel-after-data", action="store_true")
    args = parser.parse_args()

    client = Client(args.port, args.timeout)
    authority = args.authority or f"127.0.0.1:{args.port}"
    headers = [
        (":method", args.method),
        (":scheme", "http"),
        (":authority", authority),
        (":path", args.path),
    ]
    headers += [tuple(h.split(":", 1)) for h in args.header]
    trailers = [tuple(t.split(":", 1)) for t in args.trailer]
    fixed_body = bytes.fromhex(args.body_hex)
    sends_body = args.body_size > 0 or fixed_body or trailers or args.interactive
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, headers, end_stream=not sends_body)
    client.flush()
    try:
        if args.interactive:
            rounds = 0
            for i in range(args.interactive):
                chunk = pattern(1000, i)
                client.send_body(stream_id, chunk, end=False)
                want = len(client.body) + len(chunk)
                while len(client.body) < want and not client.ended:
                    client.pump(stream_id)
                if bytes(client.body[-len(chunk):]) != chunk:
                    break
                rounds += 1
            client.result["echo_rounds"] = rounds
            client.conn.end_stream(stream_id)
            client.flush()
        elif sends_body:
            body = fixed_body or pattern(args.body_size)
            if args.body_pace_ms > 0:
                client.send_paced(stream_id, body, not trailers, args.body_pace_ms / 1000.0)
            else:
                client.send_body(stream_id, body, end=not trailers)
            if trailers and not client.ended:
                client.conn.send_headers(stream_id, trailers, end_stream=True)
                client.flush()
        while not client.ended:
            client.pump(stream_id)
            if args.cancel_after_data and client.body:
                client.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
                client.flush()
                client.result["cancelled_at"] = time.monotonic()
                break
    except (ConnectionError, socket.timeout) as e:
        client.result["error"] = str(e)
    body = bytes(client.body)
    client.result["body_len"] = len(body)
    client.result["body_sha256"] = hashlib.sha256(body).hexdigest()
    client.result["body"] = body[:4096].decode("utf-8", "replace")
    client.result["request_sha256"] = hashlib.sha256(pattern(args.body_size)).hexdigest()
    client.result["body_sent"] = client.body_sent
    client.result["remote_settings"] = {
        h2.settings.SettingCodes(code).name if code in _SETTING_CODES else str(code): value
        for code, value in client.conn.remote_settings.items()
    }
    print(json.dumps(client.result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
