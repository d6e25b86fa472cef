"""A TLS client whose ClientHello goes out one byte per TCP write.

Usage: tls_trickle_client.py HOST PORT SERVER_NAME CA_FILE PATH

Python's ssl runs the handshake in memory (MemoryBIO); this script moves the bytes, writing
the first flight (the ClientHello) a byte at a time with TCP_NODELAY and a short pause between
writes, so that it reaches the proxy in many segments and many reads. The rest of the
handshake and the request go as usual. It verifies the server's certificate chain against
CA_FILE and its name against SERVER_NAME, then prints one JSON line: the certificate's subject
common name and the response body of `GET PATH`.
"""

import json
import socket
import ssl
import sys
import time


def main():
    host, port, server_name, ca_file, path = sys.argv[1:6]
    context = ssl.create_default_context(cafile=ca_file)
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    first_flight = True
    for _ in range(1000):  # bounded: a handshake takes a few round trips
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        pending = outgoing.read()
        if pending:
            if first_flight:
                for i in range(len(pending)):
                    sock.sendall(pending[i : i + 1])
                    time.sleep(0.001)
                first_flight = False
            else:
                sock.sendall(pending)
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the server closed during the handshake")
        incoming.write(data)
    else:
        raise SystemExit("no handshake after 1000 rounds")
    pending = outgoing.read()
    if pending:
        sock.sendall(pending)

    subject = dict(item[0] for item in tls.getpeercert()["subject"])
    request = f"GET {path} HTTP/1.0\r\nHost: {server_name}\r\n\r\n".encode()
    tls.write(request)
    sock.sendall(outgoing.read())
    response = b""
    for _ in range(10000):
        try:
            chunk = tls.read(65536)
            if not chunk:
                break
            response += chunk
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            break
        data = sock.recv(65536)
        if not data:
            break
        incoming.write(data)
    body = response.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    print(json.dumps({"subject": subject.get("commonName"), "body": body}))


if __name__ == "__main__":
    main()
