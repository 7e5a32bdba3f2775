"""The benchmarks' own tools: the stand-in OTLP collector counts what a real exporter sends, and
wrk sends the headers a variant asks for."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.collector import Collector
from bench.common import wrk


def test_the_collector_counts_the_spans_an_otlp_exporter_sends():
    with Collector() as collector:
        provider = TracerProvider()
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.url}/v1/traces"))
        )
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("parent"):
            for name in ("a", "b"):
                with tracer.start_as_current_span(name):
                    pass
        provider.shutdown()
        assert (collector.spans, collector.exports, collector.bad_requests) == (3, 3, 0)


def test_the_collector_refuses_what_is_not_an_otlp_export():
    with Collector() as collector:
        request = urllib.request.Request(
            f"{collector.url}/v1/traces", data=b"\xff\xff not protobuf", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 400
    # read after it stopped, as the benchmark does
    assert (collector.spans, collector.bad_requests) == (0, 1)


def test_wrk_sends_the_headers_of_the_variant(tmp_path: Path):
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = wrk(
            url,
            "/x/{id}",
            users=3,
            connections=1,
            seconds=1,
            headers={"Authorization": "Bearer t0ken"},
            scratch=tmp_path,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.requests > 0 and result.non2xx == 0
    assert seen and set(seen) == {"Bearer t0ken"}
