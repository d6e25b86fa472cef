#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge) client that a test steers, to abandon a request on cue.

    h2_abort.py PORT --path P [--body-size N [--send-only M]] [--timeout S]

Opens one connection and one POST stream to P. With `--body-size N` it declares a
`content-length` of N and uploads N bytes (byte i is i*7 mod 251) as the flow-control windows
allow, ending the stream after them; with `--send-only M` it stops after M of them and waits, the
stream still open. Without `--body-size` the request has no body. Meanwhile it reads the response and prints events, one per line, flushed:

    sent N          N body bytes are out so far (printed per 64 KiB and at the end)
    response CODE   the response head arrived
    data N          N response body bytes arrived so far
    reset CODE      the server reset the stream
    goaway CODE     the server sent GOAWAY
    eof ERROR       the server closed the connection (or broke the protocol)

It obeys commands on its standard input, one per line, at any time:

    reset           reset the stream (RST_STREAM CANCEL); the connection stays open
    close           close the connection and exit

End of input counts as `close`. After `--timeout` seconds (default 60) it exits with status 1.
"""

import argparse
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

_CYCLE = bytes((i * 7) % 251 for i in range(251))
STEP = 1 << 16


def emit(*parts):
    print(*parts, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--path", default="/")
    parser.add_argument("--body-size", type=int, default=0)
    parser.add_argument("--send-only", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    to_send = args.body_size if args.send_only is None else min(args.send_only, args.body_size)

    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{args.port}"),
        (":path", args.path),
    ]
    if args.body_size:
        headers.append(("content-length", str(args.body_size)))
    conn.send_headers(stream_id, headers, end_stream=args.body_size == 0)
    sock.sendall(conn.data_to_send())

    sent = 0
    received = 0
    stream_open = True
    connected = True
    while time.monotonic() < deadline:
        try:
            # Upload what the windows allow, one frame at a time.
            while connected and stream_open and sent < to_send:
                window = min(
                    conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                )
                if window <= 0:
                    break
                n = min(window, to_send - sent)
                offset = sent % 251
                chunk = (_CYCLE * ((offset + n) // 251 + 1))[offset : offset + n]
                conn.send_data(stream_id, chunk, end_stream=sent + n == args.body_size)
                sock.sendall(conn.data_to_send())
                before, sent = sent, sent + n
                if sent // STEP != before // STEP or sent == to_send:
                    emit("sent", sent)
            watched = [sock, sys.stdin] if connected else [sys.stdin]
            readable, _, _ = select.select(watched, [], [], 0.05)
            if sys.stdin in readable:
                command = sys.stdin.readline().strip()
                if command == "reset" and connected and stream_open:
                    conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
                    sock.sendall(conn.data_to_send())
                    stream_open = False
                    emit("did", "reset")
                elif command in ("close", ""):
                    sock.close()
                    emit("did", "close")
                    return 0
            if connected and sock in readable:
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionResetError("end of stream")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        emit("response", dict(event.headers).get(":status"))
                    elif isinstance(event, h2.events.DataReceived):
                        received += len(event.data)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        emit("data", received)
                    elif isinstance(event, h2.events.StreamReset):
                        emit("reset", int(event.error_code))
                        stream_open = False
                    elif isinstance(event, h2.events.StreamEnded):
                        stream_open = False
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        emit("goaway", int(event.error_code))
                        stream_open = False
                pending = conn.data_to_send()
                if pending:
                    sock.sendall(pending)
        except (OSError, h2.exceptions.ProtocolError) as e:
            # The server closed or broke the connection: nothing more can happen on it, but the
            # test may still want to say `close`.
            if connected:
                emit("eof", type(e).__name__)
                connected = False
                stream_open = False
    emit("timeout")
    return 1


if __name__ == "__main__":
    sys.exit(main())
