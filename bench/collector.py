"""A stand-in OTLP/HTTP trace collector for the benchmarks: accepts ``POST /v1/traces``, decodes
each export request (so a malformed export fails loudly) and counts the spans it carried.

The service under test pays for its tracing exactly as it would with Jaeger behind the endpoint:
spans are created, batched, encoded and sent over HTTP; only what a collector does with them
afterwards is left out. Jaeger itself cannot run here (no container images).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Collector:
    """``with Collector() as c:`` listens on a free loopback port; ``c.url`` is the OTLP base URL
    (what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes), ``c.spans`` the spans received so far."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self.bad_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _count(self, body: bytes) -> bool:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:  # a DecodeError: the export was not OTLP protobuf
            with self._lock:
                self.bad_requests += 1
            return False
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
            self.exports += 1
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                ok = self.path == "/v1/traces" and collector._count(body)
                self.send_response(200 if ok else 400)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
