"""Peers for tests/tests/tracing.rs.

receiver       an OTLP/HTTP collector: decodes each POST /v1/traces body as an
               ExportTraceServiceRequest with the reference opentelemetry-proto package and
               prints every span as `span {json}`; answers 200 with an empty
               ExportTraceServiceResponse.
grpc-server    a gRPC server (grpcio, generic handler): /ringmesh.test.Trace/Call answers with
               the traceparent it received.
grpc-client PORT TRACEPARENT
               calls it through the proxy with that traceparent, prints {"code", "seen"}.

Servers print `listening PORT` first.
"""

import json
import sys
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def emit(*parts):
    print(*parts, flush=True)


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    emit("span", json.dumps({
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "status": span.status.code,
                        "attributes": {a.key: any_value(a.value) for a in span.attributes},
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }, sort_keys=True))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    emit("listening", server.server_address[1])
    server.serve_forever()


def grpc_server():
    import grpc

    def call(request, context):
        metadata = dict(context.invocation_metadata())
        return metadata.get("traceparent", "").encode()

    handler = grpc.method_handlers_generic_handler(
        "ringmesh.test.Trace",
        {"Call": grpc.unary_unary_rpc_method_handler(call)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit("listening", port)
    server.wait_for_termination()


def grpc_client(port, traceparent):
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ringmesh.test.Trace/Call")
        try:
            reply = call(b"hello", metadata=(("traceparent", traceparent),), timeout=20)
            print(json.dumps({"code": "OK", "seen": reply.decode()}))
        except grpc.RpcError as error:
            print(json.dumps({"code": error.code().name, "seen": ""}))


def main():
    mode = sys.argv[1]
    if mode == "receiver":
        receiver()
    elif mode == "grpc-server":
        grpc_server()
    elif mode == "grpc-client":
        grpc_client(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
