"""The local stack's alert receiver: Alertmanager's webhook, written to a file.

    python -m rollout.local.webhook --port PORT --out FILE

Every POST body (Alertmanager's JSON: the group's alerts with their labels and annotations) is
appended to ``FILE`` as one JSON line, with the time it arrived. ``GET /-/ready`` answers 200.
``read(FILE)`` gives the notifications back, ``alerts(FILE)`` one entry per alert.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def serve(port: int, out: Path) -> None:
    lock = threading.Lock()
    out.parent.mkdir(parents=True, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload = json.loads(body)
            except ValueError:
                self.send_error(400, "expected Alertmanager's JSON")
                return
            line = json.dumps({"received_at": time.time(), "path": self.path, **payload})
            with lock, open(out, "a") as fh:
                fh.write(line + "\n")
            self.send_response(200)
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/-/ready" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


def read(path: Path) -> list[dict[str, Any]]:
    """Every notification received so far (oldest first)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def alerts(path: Path) -> Iterator[dict[str, Any]]:
    """Every alert of every notification, with the notification's ``status``, ``receiver`` and
    arrival time (``received_at``)."""
    for note in read(path):
        for alert in note.get("alerts", []):
            yield {
                **alert,
                "received_at": note["received_at"],
                "receiver": note.get("receiver"),
                "group_status": note.get("status"),
            }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rollout.local.webhook", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    serve(args.port, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
