#!/usr/bin/env python3
"""A test webhook receiver: HTTP/1.1 with keep-alive, one behaviour per path.

  /ok/...            200
  /fail/N/...        500 for the first N attempts of a webhook-id, then 200
  /status/CODE       CODE (with Retry-After: S when ?retry_after=S)
  /hang              never answers
  /drip              200 with a body sent one byte a second
  /big               200 with a 100 MB body
  /redirect?to=URL   302 to URL
  /reset             closes the connection without an answer
  /slow/MS           200 after MS milliseconds

Every request is appended to --log as one JSON line: time, connection (a
number per accepted connection), method, path, headers, body, status, and
"verified": the indices of the --secret options under which the
Standard Webhooks reference library (standardwebhooks, PyPI) accepts its
signature (null without a signature).  Accepted connections are counted in
--log too ({"connection": n, "accepted": true}), so that a test can show
that nothing reached the server at all.
"""
import argparse
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--secret", action="append", default=[])
    args = parser.parse_args()
    lock = threading.Lock()
    attempts = {}
    connections = [0]

    def log(entry):
        with lock:
            with open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            with lock:
                connections[0] += 1
                self.connection_number = connections[0]
            log({"connection": self.connection_number, "accepted": True, "time": time.time()})

        def verify(self, body):
            if not args.secret or "webhook-signature" not in self.headers:
                return None
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = []
            for i, secret in enumerate(args.secret):
                try:
                    Webhook(secret).verify(body, headers, json_parse=False)
                    verified.append(i)
                except WebhookVerificationError:
                    pass
            return verified

        def answer(self, status, body=b"", extra=()):
            self.send_response(status)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def handle_any(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            parts = url.path.strip("/").split("/")
            msg_id = self.headers.get("webhook-id", "")
            with lock:
                attempts[msg_id] = attempts.get(msg_id, 0) + 1
                attempt = attempts[msg_id]
            status = 200
            if parts[0] == "fail" and attempt <= int(parts[1]):
                status = 500
            elif parts[0] == "status":
                status = int(parts[1])
            elif parts[0] == "redirect":
                status = 302
            entry = {"time": time.time(), "connection": self.connection_number,
                     "method": self.command, "path": self.path,
                     "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": body.decode("utf-8", "replace"), "status": status,
                     "attempt": attempt, "verified": self.verify(body)}
            log(entry)
            if parts[0] == "hang":
                time.sleep(3600)
                return
            if parts[0] == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()
                return
            if parts[0] == "slow":
                time.sleep(int(parts[1]) / 1000.0)
            if parts[0] == "drip":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(1)
                return
            if parts[0] == "big":
                self.send_response(200)
                self.send_header("Content-Length", str(100 * 1024 * 1024))
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    for _ in range(1600):
                        self.wfile.write(chunk)
                except OSError:
                    pass
                return
            extra = []
            if "retry_after" in query:
                extra.append(("Retry-After", query["retry_after"][0]))
            if parts[0] == "redirect":
                extra.append(("Location", query["to"][0]))
            self.answer(status, b"ok", extra)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
