#!/usr/bin/env python3
"""A test OTLP/HTTP traces receiver.

Answers POST /v1/traces with the status codes given by --respond (one per
request, the last repeated), e.g. "500,429:2,200" (429 with Retry-After: 2).
Each request is checked strictly against the official OpenTelemetry
protobuf definitions (opentelemetry-proto): hex ids are checked and turned
into the base64 the protobuf JSON mapping expects, then the whole body goes
through json_format.Parse, which refuses unknown fields and wrong types.
Every request is appended to --log as one JSON line:
{"time": ..., "status": ..., "valid": ..., "error": ..., "request": ...}.
"""
import argparse
import base64
import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

HEX = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def hex_ids_to_base64(node):
    """OTLP/JSON writes ids in hex; protobuf's JSON mapping wants base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in HEX and isinstance(value, str):
                if not re.fullmatch("[0-9a-f]{%d}" % HEX[key], value):
                    raise ValueError("%s %r is not %d lowercase hex digits" % (key, value, HEX[key]))
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            hex_ids_to_base64(item)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--respond", default="200")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    plan = args.respond.split(",")
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            step = plan[min(count[0], len(plan) - 1)]
            count[0] += 1
            code, _, retry_after = step.partition(":")
            entry = {"time": time.time(), "status": int(code), "path": self.path,
                     "content_type": self.headers.get("Content-Type")}
            try:
                request = json.loads(raw)
                entry["request"] = json.loads(raw)
                hex_ids_to_base64(request)
                json_format.Parse(json.dumps(request), trace_service_pb2.ExportTraceServiceRequest())
                entry["valid"] = True
            except Exception as e:  # noqa: BLE001 - any failure is reported
                entry["valid"] = False
                entry["error"] = str(e)
            with open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
            self.send_response(int(code))
            if retry_after:
                self.send_header("Retry-After", retry_after)
            body = b"{}" if code == "200" else b'{"message":"test receiver says %s"}' % code.encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
