"""The service benchmark's exact figure: machine instructions per cache-warm dashboard read.

CPU time side by side moves by more than the instrumentation's cost on a shared 2-core machine,
and a count of Python calls weighs a list append like a regular-expression search. Valgrind's
callgrind counts the instructions the server process executes, the same from one run to the
next within 1%. Each untraced variant's server (``python -m app serve``, uvicorn
included) runs under callgrind with counting off until it is warm (every entry cached, every
token verified); then it counts over ``READS`` sequential reads and over twice as many more,
each user's own token with each read. The difference over ``READS`` is one read's count, free
of the cost of switching the counting on and reading it out. Not counted: the client, Postgres
and Redis, the same for every variant.
"""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bench.common import (
    BenchError,
    Report,
    Service,
    app_env,
    command,
    progress,
    start_app,
    token,
)
from bench.service_calls import counted_variants

if TYPE_CHECKING:
    from bench.service import Variant

READS = 200
_REDIS_DB = 9
_TTL_S = 86_400
_STARTUP_S = 300.0
"""Starting the server under valgrind (its imports run about 5x slower)."""


def report_instructions(
    report: Report, variants: list[Variant], dsn: str, redis_url: str, users: int, root: Path
) -> str | None:
    """Instructions per read of the untraced variants of this checkout's service into ``report``;
    with ``instrumented`` and ``off`` among them, what the instrumentation adds (a summary line).
    Nothing without valgrind (``make deps`` installs it)."""
    counted = counted_variants(variants)
    if not counted:
        return None
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        progress("service", "valgrind is not installed: instructions per read not counted")
        return None
    progress("service", f"counting instructions per read under valgrind: {', '.join(counted)}")
    per_read = {
        key: instructions_per_read(root, key, app_env(dsn, redis_url, **env), min(users, READS))
        for key, env in counted.items()
    }
    for key, n in per_read.items():
        report.figure(f"instructions_per_read_{key}", n, "", "server process, valgrind callgrind")
    if not {"instrumented", "off"} <= per_read.keys():
        return None
    on, off = per_read["instrumented"], per_read["off"]
    report.figure("ratio_instructions_instrumented_vs_off", on / off, "x", "instructions per read")
    summary = (
        f"instructions per read {on / 1000:.0f}k instrumented vs {off / 1000:.0f}k off "
        f"({on / off:.3f}x)"
    )
    quiet = per_read.get("quiet")
    if quiet is not None:
        report.figure("ratio_instructions_quiet_vs_off", quiet / off, "x", "without the X- headers")
        summary += f", {quiet / 1000:.0f}k without the X- headers ({quiet / off:.3f}x)"
    return summary


def instructions_per_read(
    root: Path, name: str, env: Mapping[str, str], users: int, reads: int = READS
) -> float:
    """One cache-warm read's instructions in the server process with ``env``, counted over
    ``reads`` reads and twice as many."""
    out = root / f"callgrind-{name}"
    # Its own Redis database and entries that outlive the run: every counted read is a hit,
    # however long the other variants' entries have been there and however slow valgrind is.
    redis_url = urlsplit(env["PORTAL_REDIS_URL"])._replace(path=f"/{_REDIS_DB}").geturl()
    ttl = str(_TTL_S)
    env = {
        **env,
        "PORTAL_REDIS_URL": redis_url,
        "PORTAL_CACHE_TTL_SHORT": ttl,
        "PORTAL_CACHE_TTL_MEDIUM": ttl,
        "PORTAL_CACHE_TTL_LONG": ttl,
    }
    service = start_app(
        root,
        f"valgrind-{name}",
        env,
        timeout=_STARTUP_S,
        wrapper=(
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}.%p",
        ),
    )
    try:
        pid = service.process.pid
        assert pid is not None
        reader = _Reader(service, users)
        reader.reads(users)  # warm: every entry cached, every token verified
        _control(pid, "--instr=on")
        reader.reads(reads)
        _control(pid, "--dump=one")
        reader.reads(2 * reads)
        _control(pid, "--dump=two")
    finally:
        service.stop()
    totals = _dumps(out, pid)
    return (totals["two"] - totals["one"]) / reads


class _Reader:
    """Sequential dashboard reads on one keep-alive connection, user N with user N's token."""

    def __init__(self, service: Service, users: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
        self.users = users
        self.tokens = {u: f"Bearer {token(u)}" for u in range(1, users + 1)}

    def reads(self, n: int) -> None:
        for i in range(n):
            user = i % self.users + 1
            path = f"/api/users/{user}/dashboard"
            self.conn.request("GET", path, headers={"authorization": self.tokens[user]})
            resp = self.conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise BenchError(f"GET {path} answered {resp.status} under valgrind")


def _control(pid: int, option: str) -> None:
    argv = ["callgrind_control", option, str(pid)]
    command(argv, " ".join(argv), timeout=120)


def _dumps(out: Path, pid: int) -> dict[str, int]:
    """{dump reason: instructions since the dump before} from callgrind's files for ``pid``."""
    totals: dict[str, int] = {}
    for path in out.parent.glob(f"{out.name}.{pid}*"):
        reason = ""
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("desc: Trigger: dump "):
                reason = line.rsplit(" ", 1)[-1]
            elif line.startswith("summary:") and reason:
                totals[reason] = int(line.split()[1])
    if not {"one", "two"} <= totals.keys():
        raise BenchError(f"callgrind wrote no counts for both reads in {out.parent} ({totals})")
    return totals
