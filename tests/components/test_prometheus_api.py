"""Prometheus as the stacks run it has no lifecycle API and no admin API: a real Prometheus
started with the rendered container's arguments refuses ``/-/quit``, ``/-/reload`` and the TSDB
admin endpoints and keeps answering queries (the release gates' source stays up)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.render import manifests
from rollout.local.processes import Process, find_binary, free_port, http_ok, wait_until

FORBIDDEN_FLAGS = ("--web.enable-lifecycle", "--web.enable-admin-api")


def rendered_args(run) -> list[str]:
    statefulset = next(
        o
        for o in manifests(run)
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "prometheus"
    )
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    args: list[str] = next(c for c in containers if c["name"] == "prometheus")["args"]
    return args


def on_loopback(args: list[str], directory: Path, port: int) -> list[str]:
    """The rendered arguments with the pod's paths and listen address moved to ``directory``
    and loopback; every other flag as rendered."""
    moved = {
        "--config.file": str(directory / "prometheus.yml"),
        "--storage.tsdb.path": str(directory / "tsdb"),
        "--web.listen-address": f"127.0.0.1:{port}",
    }
    out = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        out.append(f"{flag}={moved[flag]}" if flag in moved else arg)
    return out


def post(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def start(run, directory: Path, *extra: str) -> tuple[Process, str]:
    """A real Prometheus with the rendered arguments (and ``extra``) on loopback."""
    directory.mkdir(parents=True)
    (directory / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    args = [*on_loopback(rendered_args(run), directory, port), *extra]
    process = Process("prometheus", directory, [find_binary("prometheus"), *args], cwd=directory)
    process.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/-/ready"), 60, "Prometheus", process.log, process.alive)
    return process, url


@pytest.fixture
def prometheus(tmp_path: Path, run) -> Iterator[tuple[Process, str]]:
    process, url = start(run, tmp_path / "prometheus")
    try:
        yield process, url
    finally:
        process.stop()


def test_the_rendered_prometheus_has_neither_flag(run):
    args = rendered_args(run)
    assert not [a for a in args if a.split("=", 1)[0] in FORBIDDEN_FLAGS], args


def test_a_prometheus_with_the_rendered_arguments_cannot_be_stopped_or_reloaded(prometheus):
    process, url = prometheus
    assert post(f"{url}/-/quit") == (403, "Lifecycle API is not enabled.")
    assert post(f"{url}/-/reload") == (403, "Lifecycle API is not enabled.")
    for endpoint in ("snapshot", "delete_series?match[]=up", "clean_tombstones"):
        status, body = post(f"{url}/api/v1/admin/tsdb/{endpoint}")
        assert (status, json.loads(body)["error"]) == (500, "admin APIs disabled"), endpoint
    assert process.alive() and http_ok(f"{url}/-/ready")
    with urllib.request.urlopen(f"{url}/api/v1/query?query=1", timeout=10) as response:
        assert response.status == 200


def test_with_the_lifecycle_flag_anyone_could_stop_it(tmp_path: Path, runs):
    """The check can fail: the same arguments plus ``--web.enable-lifecycle`` let a POST stop
    the server."""
    process, url = start(runs["staging"], tmp_path / "open", "--web.enable-lifecycle")
    try:
        assert post(f"{url}/-/quit")[0] == 200
        wait_until(lambda: not process.alive(), 60, "Prometheus to quit", process.log)
    finally:
        process.stop()
