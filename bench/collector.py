"""A stand-in OTLP/HTTP trace collector for the benchmarks: accepts ``POST /v1/traces``, decodes
each export request (so a malformed export fails loudly) and counts the spans it carried.

The service under test pays for its tracing exactly as it would with Jaeger behind the endpoint:
spans are created, batched, encoded and sent over HTTP; only what a collector does with them
afterwards is left out. Jaeger itself cannot run here (no container images).
"""

from __future__ import annotations

import multiprocessing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from types import TracebackType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.common import BenchError

_SPANS, _EXPORTS, _BAD = range(3)
_START_TIMEOUT_S = 60.0


class Collector:
    """``with Collector() as c:`` listens on a free loopback port; ``c.url`` is the OTLP base URL
    (what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes), ``c.spans`` the spans received so far.

    It runs in a process of its own, as a real collector does: decoding exports in the
    benchmark's process would stall the load client that shares it and add to the latencies it
    measures. An export's spans are counted before its response is sent.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._counts: SynchronizedArray[int] = ctx.Array("q", 3)
        self._ready, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_serve, args=(self._counts, child), name="otlp-collector", daemon=True
        )
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def spans(self) -> int:
        return int(self._counts[_SPANS])

    @property
    def exports(self) -> int:
        return int(self._counts[_EXPORTS])

    @property
    def bad_requests(self) -> int:
        return int(self._counts[_BAD])

    def __enter__(self) -> Collector:
        self._process.start()
        if not self._ready.poll(_START_TIMEOUT_S):
            self._process.kill()
            raise BenchError(f"the OTLP collector did not start in {_START_TIMEOUT_S:g}s")
        self._port = int(self._ready.recv())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _count(counts: SynchronizedArray[int], body: bytes) -> bool:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # a DecodeError: the export was not OTLP protobuf
        with counts.get_lock():
            counts[_BAD] += 1
        return False
    n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    with counts.get_lock():
        counts[_SPANS] += n
        counts[_EXPORTS] += 1
    return True


def _serve(counts: SynchronizedArray[int], ready: Connection) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            ok = self.path == "/v1/traces" and _count(counts, body)
            self.send_response(200 if ok else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ready.send(server.server_address[1])
    server.serve_forever()
