"""A tiny HTTP service that follows remote-http-launcher's status-file protocol.

Used by `seamless-service demo` (real demo services for a first look, with no Seamless
installed) and by the tests. Launched through the launcher as
`seamless-service-demo --status-file PATH [--fail] [--ignore-signals] [--host H]`: binds a
free port, answers GET /healthcheck with 200, then rewrites the status file with status
"running" and the port (or "failed"). --ignore-signals makes it ignore SIGINT and SIGTERM,
so a stop must escalate to SIGKILL.
"""

import argparse
import http.server
import json
import os
import signal
import sys
import tempfile


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server naming
        body = b"ok\n" if self.path.startswith("/healthcheck") else b"toy\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("demo-service: " + (fmt % args) + "\n")
        sys.stdout.flush()


def write_status(path, **fields):
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    data.update(fields)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".demo.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--ignore-signals", action="store_true")
    parser.add_argument("workdir", nargs="?")
    args = parser.parse_args()
    if args.ignore_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("demo-service: starting", flush=True)
    if args.fail:
        write_status(args.status_file, status="failed")
        print("demo-service: failing on purpose", flush=True)
        return 1
    server = http.server.ThreadingHTTPServer((args.host if args.host != "localhost" else "127.0.0.1", 0), Handler)
    port = server.server_address[1]
    write_status(args.status_file, status="running", port=port)
    print(f"demo-service: serving on port {port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
