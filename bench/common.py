"""What every benchmark shares: real servers on loopback, app processes, wrk, figures, results.

A benchmark prints one line per figure (``name  figure  value  unit  note``) and a final
``SUMMARY`` line, and writes everything it measured to ``bench/results/<name>.json``.
Absolute numbers on a shared two-core machine mean little; the benchmarks therefore measure the
things they compare side by side in one run, alternate them, and report medians and ratios.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.auth import mint, subject_for
from app.keys import KeySet, write_key_file
from rollout.local.processes import Process, ServerError, free_port, http_ok, wait_until
from rollout.local.servers import PostgresServer, RedisServer

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PYTHON = sys.executable


class BenchError(RuntimeError):
    """A benchmark could not run; the message says what failed and where to look."""


# ------------------------------------------------------------------------------ reporting


@dataclass
class Report:
    """The figures of one benchmark: printed as they come, saved as JSON at the end."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    started: float = field(default_factory=time.time)

    def figure(
        self, key: str, value: float | int | str | None, unit: str = "", note: str = ""
    ) -> None:
        self.figures.append({"figure": key, "value": value, "unit": unit, "note": note})
        shown = _fmt(value)
        line = f"{self.name:<11} {key:<34} {shown:>12} {unit:<8}"
        print(f"{line} {note}".rstrip(), flush=True)

    def finish(self, summary: str) -> Path:
        self.summary = summary
        print(f"{self.name:<11} SUMMARY  {summary}", flush=True)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        doc = {
            "benchmark": self.name,
            "started_at": self.started,
            "seconds": round(time.time() - self.started, 1),
            "params": self.params,
            "figures": self.figures,
            "summary": summary,
            "load_average_at_end": os.getloadavg(),
            "data": self.data,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        tmp.replace(path)
        return path


def progress(name: str, message: str) -> None:
    """Progress on stderr, so stdout holds only figures."""
    print(f"[{name}] {message}", file=sys.stderr, flush=True)


def _fmt(value: float | int | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return float(ordered[min(rank, len(ordered)) - 1])


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1")
    return value


# ------------------------------------------------------------------------------ servers


@contextlib.contextmanager
def server_root(name: str, keep: bool = False) -> Iterator[Path]:
    """A world-traversable scratch directory (PostgreSQL runs as the postgres user)."""
    root = Path(tempfile.mkdtemp(prefix=f"portal-bench-{name}-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        if not keep and not os.environ.get("PORTAL_BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres(root: Path, **settings: str) -> Iterator[PostgresServer]:
    server = PostgresServer(root / "pg", free_port(), settings).start()
    try:
        yield server
    finally:
        server.stop("immediate")


@contextlib.contextmanager
def redis(root: Path) -> Iterator[RedisServer]:
    server = RedisServer(root / "redis", free_port()).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ credentials

_KEYS_DIR = Path(tempfile.mkdtemp(prefix="portal-bench-keys-"))
KEYS_FILE = _KEYS_DIR / "keys.json"
"""The key set of every service a benchmark starts; the benchmarks mint their clients' tokens."""
_KEYS = KeySet(()).with_new_key("bench-1")
write_key_file(KEYS_FILE, _KEYS)
atexit.register(shutil.rmtree, _KEYS_DIR, True)


def token(user: int | None = None, *, scopes: Sequence[str] = (), ttl: int = 86_400) -> str:
    """A bearer token the benchmarks' services accept: a user's, or an operator's."""
    subject = subject_for(user_id=user) if user is not None else subject_for(service="bench")
    return mint(_KEYS, subject, scopes, ttl)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {token(scopes=('admin',))}"}


def user_tokens_file(scratch: Path, users: int) -> Path:
    """One user token a line, user 1 first: ``wrk`` sends user N's own token with their path."""
    path = scratch / f"tokens-{users}.txt"
    if not path.exists():
        path.write_text("".join(token(u) + "\n" for u in range(1, users + 1)))
    return path


def app_env(dsn: str, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of ``python -m app``: ours minus any PORTAL_/OTEL_ settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_", "SENTRY_"))}
    env["PORTAL_DATABASE_URL"] = dsn
    env["PORTAL_AUTH_KEYS_FILE"] = str(KEYS_FILE)
    if redis_url:
        env["PORTAL_REDIS_URL"] = redis_url
    env["PORTAL_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def command(
    argv: Sequence[str], what: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> str:
    """Run ``argv`` in the repository; its stdout, or BenchError naming ``what`` with its
    stderr."""
    result = subprocess.run(
        list(argv),
        env=None if env is None else dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"{what} failed: {result.stderr.strip()}")
    return result.stdout


def app_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 300) -> str:
    """Run ``python -m app <args>``; its stdout, or BenchError with its stderr."""
    return command([PYTHON, "-m", "app", *args], f"python -m app {' '.join(args)}", env, timeout)


def seeded_database(pg: PostgresServer, name: str, users: int) -> str:
    """A database migrated (all phases) and seeded with ``users`` users; its DSN."""
    dsn = pg.create_database(name)
    env = app_env(dsn)
    app_cli(["migrate", "--phase", "all"], env)
    app_cli(["seed", "--users", str(users)], env)
    return dsn


@dataclass
class Service:
    """An HTTP server process on a loopback port (the app, or the bare comparison app)."""

    name: str
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def _serve(
    root: Path,
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    what: str,
    port: int,
    timeout: float,
    cwd: Path = REPO,
) -> Service:
    """Start ``argv`` (listening on ``port``); ready when /api/health answers."""
    proc = Process(name, root / name, argv, env=dict(env), cwd=cwd)
    proc.start()
    service = Service(name, proc, port)
    try:
        wait_until(
            lambda: http_ok(f"{service.url}/api/health"),
            timeout,
            what,
            proc.log,
            proc.alive,
        )
    except ServerError:
        proc.stop()
        raise
    return service


def start_app(
    root: Path,
    name: str,
    env: Mapping[str, str],
    timeout: float = 60,
    source: Path = REPO,
    wrapper: Sequence[str] = (),
) -> Service:
    """``python -m app serve`` on a free port, ready when /api/health answers. ``source`` is the
    directory whose ``app`` package runs (another revision's, to compare code side by side);
    ``wrapper`` comes before the interpreter on its command line (``valgrind ...``)."""
    port = free_port()
    argv = [*wrapper, PYTHON, "-m", "app", "serve", "--port", str(port)]
    return _serve(root, name, argv, env, f"app {name}", port, timeout, cwd=source)


def start_bare(root: Path, name: str = "bare", timeout: float = 60) -> Service:
    """``bench.bare`` (constant JSON, same framework and server settings) on a free port."""
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "bench.bare:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
    ]
    return _serve(root, name, argv, os.environ, f"bare app {name}", port, timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3 of the man page, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` summed per metric name (all label sets together)."""
    request = urllib.request.Request(f"{url}/metrics", headers=admin_headers())
    with urllib.request.urlopen(request, timeout=10) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


# ------------------------------------------------------------------------------ wrk

_WRK_LUA = """
local n = tonumber(os.getenv("BENCH_USERS") or "0")
local path = os.getenv("BENCH_PATH") or "/"
local headers = {}
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\\n]+") do
  local k, v = string.match(line, "^([^:]+):%s*(.*)$")
  if k then headers[k] = v end
end
local tokens = {}
local tokens_file = os.getenv("BENCH_TOKENS_FILE") or ""
if tokens_file ~= "" then
  for line in io.lines(tokens_file) do tokens[#tokens + 1] = "Bearer " .. line end
end
counter = 0
request = function()
  counter = counter + 1
  local p = path
  if n > 0 then
    local id = (counter % n) + 1
    p = string.gsub(path, "{id}", tostring(id))
    if tokens[id] then headers["Authorization"] = tokens[id] end
  end
  return wrk.format("GET", p, headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p95_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d, \\"errors\\": %d, \\"non2xx\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    non2xx: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def wrk(
    url: str,
    path: str,
    *,
    users: int = 0,
    connections: int = 32,
    threads: int = 1,
    seconds: float = 5.0,
    headers: Mapping[str, str] | None = None,
    tokens: Path | None = None,
    scratch: Path,
) -> WrkResult:
    """``wrk --latency`` against ``url + path`` (``{id}`` in the path cycles 1..users), sending
    ``headers`` with every request and, with ``tokens`` (``user_tokens_file``), user N's own
    bearer token with user N's path."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed; run `make deps` (scripts/bootstrap.sh)")
    script = scratch / "bench.lua"
    if not script.exists():
        script.write_text(_WRK_LUA)
    env = dict(os.environ, BENCH_PATH=path, BENCH_USERS=str(users))
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
    env["BENCH_TOKENS_FILE"] = str(tokens) if tokens else ""
    argv = [
        "wrk",
        "--latency",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(
            f"wrk against {url}{path} failed: {result.stderr.strip()}"
            f" {result.stdout.strip()[-400:]}"
        )
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds_run = raw["duration_us"] / 1e6
    return WrkResult(
        rps=raw["requests"] / seconds_run if seconds_run else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        requests=raw["requests"],
        errors=raw["errors"],
        non2xx=raw["non2xx"],
    )
