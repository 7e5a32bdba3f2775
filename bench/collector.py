"""A stand-in OTLP/HTTP trace collector for the benchmarks: accepts ``POST /v1/traces``, decodes
each export request (so a malformed export fails loudly) and counts the spans it carried.

The service under test pays for its tracing exactly as it would with Jaeger behind the endpoint:
spans are created, batched, encoded and sent over HTTP; only what a collector does with them
afterwards is left out. Jaeger itself cannot run here (no container images).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.common import REPO, BenchError


class Collector:
    """``with Collector() as c:`` listens on a free loopback port; ``c.url`` is the OTLP base URL
    (what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes), ``c.spans`` the spans received so far.

    It runs in a process of its own (``python -m bench.collector``), as a real collector does:
    decoding exports in the benchmark's process would stall the load client that shares it and
    add to the latencies it measures. An export's spans are counted before its response is
    sent; ``GET /counts`` reads the counts.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._final: dict[str, int] | None = None
        """The counts when the collector stopped (they stay readable after it)."""
        self.url = ""

    def _counts(self) -> dict[str, int]:
        if self._final is not None:
            return self._final
        with urllib.request.urlopen(f"{self.url}/counts", timeout=10) as resp:
            counts: dict[str, int] = json.load(resp)
        return counts

    @property
    def spans(self) -> int:
        return self._counts()["spans"]

    @property
    def exports(self) -> int:
        return self._counts()["exports"]

    @property
    def bad_requests(self) -> int:
        return self._counts()["bad_requests"]

    def __enter__(self) -> Collector:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.collector"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.isdigit():
            self._process.kill()
            raise BenchError(f"the OTLP collector did not start (exit {self._process.wait()})")
        self.url = f"http://127.0.0.1:{line}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._final = self._counts()
            self._process.terminate()
            self._process.wait(10)


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"spans": 0, "exports": 0, "bad_requests": 0}

    def add(self, body: bytes) -> bool:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:  # a DecodeError: the export was not OTLP protobuf
            with self.lock:
                self.values["bad_requests"] += 1
            return False
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.values["spans"] += n
            self.values["exports"] += 1
        return True


def main() -> None:
    counts = _Counts()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            ok = self.path == "/v1/traces" and counts.add(body)
            self.send_response(200 if ok else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path != "/counts":
                self.send_error(404)
                return
            with counts.lock:
                body = json.dumps(counts.values).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
