"""An HTTP receiver a test runs, answering from a script: what a webhook, Slack or PagerDuty
looks like to Alertmanager (and what Alertmanager's API looks like to portalctl when it
fails)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    at: float
    method: str
    path: str
    body: Any
    answered: int | None = None


@dataclass
class ScriptedReceiver:
    """Answers the n-th request with ``script[n]`` (a status, or ``"hang:S"``: answer 200 after
    S seconds), then ``then`` for every later one. Records every request."""

    script: Sequence[int | str] = ()
    then: int = 200
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _next(self) -> int | str:
        with self._lock:
            n = len(self.received) - 1
        return self.script[n] if n < len(self.script) else self.then

    def start(self) -> ScriptedReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                record = Received(time.time(), self.command, self.path, body)
                with owner._lock:
                    owner.received.append(record)
                action = owner._next()
                status = 200
                if isinstance(action, str) and action.startswith("hang:"):
                    time.sleep(float(action.split(":", 1)[1]))
                else:
                    status = int(action)
                record.answered = status
                payload = b'{"status":"ok"}' if status < 300 else b'{"error":"scripted"}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up waiting
                    record.answered = None

            do_POST = _handle
            do_PUT = _handle
            do_GET = _handle
            do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def requests(self, path: str = "") -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.startswith(path)]


def poll(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """``check()``'s first truthy answer; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(every)


def alerts_of(notes: Iterator[dict[str, Any]], name: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in notes
        if a["labels"].get("alertname") == name
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]
