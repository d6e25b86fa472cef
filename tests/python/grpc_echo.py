#!/usr/bin/env python3
"""A gRPC server and client (grpcio) for ringmesh's black-box tests, on the service in echo.proto.

The stubs are generated from echo.proto with grpc_tools at start-up, into a temporary directory,
so no generated code is committed and the stubs always match the installed grpcio.

    grpc_echo.py server
        prints `listening PORT`, then event lines: `started METHOD T`, `cancelled METHOD T` (the
        server saw its call end early: T is time.monotonic(), comparable across processes),
        `bidi-done N`
    grpc_echo.py client PORT SCENARIO [options]
        runs one scenario against PORT (the proxy) and prints one JSON object; with
        `--tls-ca FILE --tls-name NAME`, over TLS channel credentials (with
        `--tls-cert FILE --tls-key FILE`, presenting a client certificate)

Scenarios: unary, fail, server-stream, client-stream, bidi, deadline, cancel, call (any method,
to see which status comes back), flaky (a unary call that the server fails with UNAVAILABLE the
first `--failures` times for `--key`, counted across calls; the server prints `flaky-call KEY N`
for each).
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures


def load_stubs():
    from grpc_tools import protoc

    here = os.path.dirname(os.path.abspath(__file__))
    out = tempfile.mkdtemp(prefix="ringmesh-grpc-stubs-")
    code = protoc.main(
        ["protoc", f"-I{here}", f"--python_out={out}", f"--grpc_python_out={out}", "echo.proto"]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    import echo_pb2
    import echo_pb2_grpc

    return echo_pb2, echo_pb2_grpc


import grpc  # noqa: E402

pb, pb_grpc = load_stubs()

FAIL_MESSAGE = 'bad payload: 100% \u2717 "quoted"'


def emit(*parts):
    print(*parts, flush=True)


FLAKY = {}
FLAKY_LOCK = threading.Lock()


class Echo(pb_grpc.EchoServicer):
    def Unary(self, request, context):
        if request.payload.startswith(b"flaky:"):
            _, failures, key = request.payload.decode().split(":", 2)
            with FLAKY_LOCK:
                FLAKY[key] = FLAKY.get(key, 0) + 1
                count = FLAKY[key]
            emit("flaky-call", key, count)
            if count <= int(failures):
                context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky {count}")
            return pb.Msg(seq=count, payload=b"ok")
        if request.payload == b"fail":
            context.set_trailing_metadata((("x-failure-detail", "on purpose"),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, FAIL_MESSAGE)
        metadata = dict(context.invocation_metadata())
        context.send_initial_metadata((("x-initial", "yes"),))
        context.set_trailing_metadata(
            (("x-trailer", "unary-done"), ("x-client-echo", metadata.get("x-client", "")))
        )
        return pb.Msg(seq=request.seq, payload=request.payload)

    def ServerStream(self, request, context):
        payload = b"s" * request.size
        for i in range(request.count):
            yield pb.Msg(seq=i, payload=payload)

    def ClientStream(self, request_iterator, context):
        digest = hashlib.sha256()
        count = 0
        for message in request_iterator:
            if message.seq != count:
                context.abort(grpc.StatusCode.DATA_LOSS, f"message {message.seq} at {count}")
            digest.update(message.payload)
            count += 1
        return pb.Msg(seq=count, payload=digest.digest())

    def Bidi(self, request_iterator, context):
        payloads = {}
        count = 0
        for message in request_iterator:
            size = message.reply_size
            if size not in payloads:
                payloads[size] = b"b" * size
            yield pb.Msg(seq=message.seq, payload=payloads[size])
            count += 1
        emit("bidi-done", count)

    def watch(self, method, context):
        """Reports `cancelled METHOD T` once if the call ends before the handler is done. The
        termination callback fires even when grpcio never resumes a streaming handler that is
        waiting to yield its next message."""
        state = {"done": False, "reported": False}

        def report():
            if not state["done"] and not state["reported"]:
                state["reported"] = True
                emit("cancelled", method, time.monotonic())

        context.add_callback(report)
        state["report"] = report
        return state

    def sleep(self, method, request, context, state):
        emit("started", method, time.monotonic())
        deadline = time.monotonic() + request.ms / 1000.0
        while time.monotonic() < deadline:
            if not context.is_active():
                state["report"]()
                return False
            time.sleep(0.005)
        state["done"] = True
        return True

    def Sleep(self, request, context):
        state = self.watch("Sleep", context)
        self.sleep("Sleep", request, context, state)
        return pb.Msg(seq=1)

    def SleepStream(self, request, context):
        state = self.watch("SleepStream", context)
        yield pb.Msg(seq=0)
        if self.sleep("SleepStream", request, context, state):
            yield pb.Msg(seq=1)


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit("listening", port)
    server.wait_for_termination()


def status_of(error):
    return {"code": error.code().name, "details": error.details()}


def client(args):
    if args.tls_ca:
        # TLS channel credentials: verify the proxy's certificate with the test CA, as the name
        # given (the certificate's name, not 127.0.0.1).
        with open(args.tls_ca, "rb") as f:
            roots = f.read()
        chain = key = None
        if args.tls_cert:
            # A client certificate for an mTLS listener.
            with open(args.tls_cert, "rb") as f:
                chain = f.read()
            with open(args.tls_key, "rb") as f:
                key = f.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=key, certificate_chain=chain
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{args.port}",
            credentials,
            options=[
                ("grpc.enable_http_proxy", 0),
                ("grpc.ssl_target_name_override", args.tls_name),
            ],
        )
    else:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{args.port}", options=[("grpc.enable_http_proxy", 0)]
        )
    stub = pb_grpc.EchoStub(channel)
    timeout = args.timeout
    result = {"scenario": args.scenario}
    started = time.monotonic()
    try:
        if args.scenario == "unary":
            payload = os.urandom(args.size)
            reply, call = stub.Unary.with_call(
                pb.Msg(seq=7, payload=payload), metadata=(("x-client", "abc"),), timeout=timeout
            )
            result.update(
                code="OK",
                seq=reply.seq,
                payload_match=reply.payload == payload,
                initial_metadata=dict(call.initial_metadata()),
                trailing_metadata=dict(call.trailing_metadata()),
            )
        elif args.scenario == "fail":
            try:
                stub.Unary(pb.Msg(payload=b"fail"), timeout=timeout)
                result["code"] = "OK"
            except grpc.RpcError as e:
                result.update(status_of(e), trailing_metadata=dict(e.trailing_metadata() or ()))
                result["expected_details"] = FAIL_MESSAGE
        elif args.scenario == "server-stream":
            seqs = [
                m.seq if len(m.payload) == args.size else -1
                for m in stub.ServerStream(
                    pb.StreamRequest(count=args.count, size=args.size), timeout=timeout
                )
            ]
            result.update(code="OK", received=len(seqs), in_order=seqs == list(range(args.count)))
        elif args.scenario == "client-stream":
            payloads = [os.urandom(args.size) for _ in range(args.count)]
            reply = stub.ClientStream(
                iter(pb.Msg(seq=i, payload=p) for i, p in enumerate(payloads)), timeout=timeout
            )
            digest = hashlib.sha256(b"".join(payloads)).digest()
            result.update(code="OK", count=reply.seq, digest_match=reply.payload == digest)
        elif args.scenario == "bidi":
            requests = (pb.Msg(seq=i, reply_size=args.size) for i in range(args.count))
            received = 0
            in_order = True
            for reply in stub.Bidi(requests, timeout=timeout):
                in_order = in_order and reply.seq == received and len(reply.payload) == args.size
                received += 1
                if received == args.stall_after:
                    emit_stderr("stalling")
                    time.sleep(args.stall)
                    emit_stderr("reading")
            result.update(code="OK", received=received, in_order=in_order)
        elif args.scenario == "deadline":
            try:
                stub.Sleep(pb.SleepRequest(ms=args.sleep_ms), timeout=args.deadline_ms / 1000.0)
                result["code"] = "OK"
            except grpc.RpcError as e:
                result.update(status_of(e))
        elif args.scenario == "cancel":
            call = stub.SleepStream(pb.SleepRequest(ms=args.sleep_ms), timeout=timeout)
            first = next(call)
            result["first_seq"] = first.seq
            result["cancelled_at"] = time.monotonic()
            call.cancel()
            result["code"] = call.code().name
        elif args.scenario == "flaky":
            reply = stub.Unary(
                pb.Msg(payload=f"flaky:{args.failures}:{args.key}".encode()), timeout=timeout
            )
            result.update(code="OK", seq=reply.seq)
        elif args.scenario == "call":
            # `--repeat N`: N calls in a row on one channel; `codes` lists every outcome and the
            # result describes the last one.
            method = channel.unary_unary(args.method)
            codes = []
            for _ in range(args.repeat):
                try:
                    method(b"", timeout=timeout)
                    result["code"] = "OK"
                    result.pop("details", None)
                except grpc.RpcError as e:
                    result.update(status_of(e))
                codes.append(result["code"])
            result["codes"] = codes
        else:
            raise SystemExit(f"unknown scenario {args.scenario}")
    except grpc.RpcError as e:
        result.update(status_of(e))
    result["elapsed"] = round(time.monotonic() - started, 3)
    print(json.dumps(result), flush=True)


def emit_stderr(*parts):
    print(*parts, file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("port", type=int, nargs="?")
    parser.add_argument("scenario", nargs="?")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--failures", type=int, default=0)
    parser.add_argument("--key", default="")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--stall-after", type=int, default=0)
    parser.add_argument("--stall", type=float, default=0.0)
    parser.add_argument("--sleep-ms", type=int, default=10000)
    parser.add_argument("--deadline-ms", type=int, default=500)
    parser.add_argument("--method", default="/ringmesh.test.Echo/Unary")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tls-ca", default="")
    parser.add_argument("--tls-name", default="localhost")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    args = parser.parse_args()
    if args.mode == "server":
        serve()
    else:
        client(args)


if __name__ == "__main__":
    sys.exit(main())
