"""``python -m app analyze``: where the database spends its time, as a readable report.

Slowest statements (pg_stat_statements, when installed and preloaded), index usage, unused and
INVALID indexes, sequential scans on sizeable tables, buffer cache hit ratios, and what to do
about each finding. Read-only: it changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from app.migrate import connect

CACHE_HIT_TARGET = 0.99
SEQ_SCAN_MIN_ROWS = 1000


def collect(dsn: str, limit: int = 10) -> dict[str, Any]:
    with connect(dsn, "portal-analyze") as conn:
        db = conn.execute("SELECT current_database()").fetchone()
        report: dict[str, Any] = {
            "database": db[0] if db else "",
            "generatedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "slowestStatements": _statements(conn, limit),
            "indexUsage": _rows(
                conn,
                """
                SELECT s.relname AS "table", s.indexrelname AS "index", s.idx_scan AS scans,
                       s.idx_tup_read AS "tuplesRead",
                       pg_relation_size(s.indexrelid) AS "sizeBytes"
                FROM pg_stat_user_indexes s
                ORDER BY s.idx_scan DESC, s.relname, s.indexrelname""",
            ),
            "unusedIndexes": _rows(
                conn,
                """
                SELECT s.relname AS "table", s.indexrelname AS "index",
                       pg_relation_size(s.indexrelid) AS "sizeBytes"
                FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
                WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
                ORDER BY pg_relation_size(s.indexrelid) DESC, s.indexrelname""",
            ),
            "invalidIndexes": _rows(
                conn,
                """
                SELECT t.relname AS "table", c.relname AS "index"
                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_class t ON t.oid = i.indrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE NOT i.indisvalid AND n.nspname = current_schema()
                ORDER BY c.relname""",
            ),
            "sequentialScans": _rows(
                conn,
                """
                SELECT relname AS "table", seq_scan AS "seqScans",
                       seq_tup_read AS "seqTuplesRead", COALESCE(idx_scan, 0) AS "indexScans",
                       n_live_tup AS "liveRows",
                       round(seq_scan::numeric / NULLIF(seq_scan + COALESCE(idx_scan, 0), 0),
                             3)::float AS "seqScanRatio"
                FROM pg_stat_user_tables
                WHERE seq_scan > 0
                ORDER BY seq_tup_read DESC, relname""",
            ),
            "cacheHitRatio": _cache_hit(conn),
        }
    report["recommendations"] = _recommend(report)
    return report


def _rows(conn: psycopg.Connection[Any], query: str) -> list[dict[str, Any]]:
    cur = conn.execute(query.encode())
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _statements(conn: psycopg.Connection[Any], limit: int) -> dict[str, Any]:
    installed = conn.execute(
        "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
    ).fetchone()
    if not installed:
        return {
            "available": False,
            "rows": [],
            "note": "pg_stat_statements is not installed (it needs "
            "shared_preload_libraries = 'pg_stat_statements' and "
            "CREATE EXTENSION pg_stat_statements)",
        }
    try:
        with conn.transaction():
            rows = _rows(
                conn,
                f"""
                SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls,
                       round(mean_exec_time::numeric, 3)::float AS "meanMs",
                       round(total_exec_time::numeric, 1)::float AS "totalMs", rows
                FROM pg_stat_statements
                WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND query !~* '(pg_stat|pg_catalog|pg_class|pg_index)'
                  AND query !~* '^\\s*(BEGIN|COMMIT|ROLLBACK|SET|SHOW|ANALYZE)'
                ORDER BY mean_exec_time DESC
                LIMIT {int(limit)}""",
            )
    except psycopg.Error as exc:
        return {
            "available": False,
            "rows": [],
            "note": f"pg_stat_statements is installed but unreadable: "
            f"{(exc.diag.message_primary or str(exc)).strip()}",
        }
    return {"available": True, "rows": rows, "note": ""}


def _cache_hit(conn: psycopg.Connection[Any]) -> dict[str, float | None]:
    row = conn.execute("""
        SELECT (SELECT sum(heap_blks_hit)::float
                       / NULLIF(sum(heap_blks_hit) + sum(heap_blks_read), 0)
                FROM pg_statio_user_tables),
               (SELECT sum(idx_blks_hit)::float
                       / NULLIF(sum(idx_blks_hit) + sum(idx_blks_read), 0)
                FROM pg_statio_user_indexes)""").fetchone()
    tables, indexes = (row[0], row[1]) if row else (None, None)
    return {
        "tables": None if tables is None else round(tables, 4),
        "indexes": None if indexes is None else round(indexes, 4),
    }


def _recommend(report: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for ix in report["invalidIndexes"]:
        out.append(
            f"index {ix['index']} on {ix['table']} is INVALID (an interrupted concurrent "
            f"build): run `python -m app migrate` to drop and rebuild it"
        )
    for t in report["sequentialScans"]:
        if t["liveRows"] >= SEQ_SCAN_MIN_ROWS and t["seqScans"] > t["indexScans"]:
            out.append(
                f"{t['table']} ({t['liveRows']} rows) is read by sequential scans more "
                f"often than by index ({t['seqScans']} vs {t['indexScans']}): check the "
                f"WHERE clauses of its queries against its indexes"
            )
    for ix in report["unusedIndexes"]:
        out.append(
            f"index {ix['index']} on {ix['table']} has not been used since statistics "
            f"were reset: drop it if that stays so under production traffic"
        )
    ratio = report["cacheHitRatio"]
    for kind in ("tables", "indexes"):
        value = ratio[kind]
        if value is not None and value < CACHE_HIT_TARGET:
            out.append(
                f"{kind} cache hit ratio is {value:.1%} (target {CACHE_HIT_TARGET:.0%}): "
                f"shared_buffers may be too small for the working set"
            )
    slow = report["slowestStatements"]
    for s in slow["rows"][:3]:
        if s["meanMs"] >= 100:
            out.append(
                f"a statement averages {s['meanMs']:.0f} ms over {s['calls']} calls: "
                f"EXPLAIN ANALYZE it ({s['query'][:80]}...)"
            )
    if not slow["available"]:
        out.append(slow["note"])
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"Database analysis of {report['database']} at {report['generatedAt']}", ""]

    def section(title: str, rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
        lines.append(f"== {title}")
        if not rows:
            lines.append(f"   {empty}")
            lines.append("")
            return
        cells = [[_cell(r[c]) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        lines.append("   " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in cells:
            lines.append("   " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
        lines.append("")

    slow = report["slowestStatements"]
    section(
        "Slowest statements (mean time, pg_stat_statements)",
        [{**r, "query": r["query"][:70]} for r in slow["rows"]],
        ["meanMs", "calls", "totalMs", "rows", "query"],
        slow["note"] or "no statements recorded yet",
    )
    section(
        "Index usage",
        report["indexUsage"],
        ["table", "index", "scans", "tuplesRead", "sizeBytes"],
        "no indexes",
    )
    section(
        "Unused indexes (never scanned, not unique)",
        report["unusedIndexes"],
        ["table", "index", "sizeBytes"],
        "none",
    )
    section("INVALID indexes", report["invalidIndexes"], ["table", "index"], "none")
    section(
        "Sequential scans",
        report["sequentialScans"],
        ["table", "seqScans", "seqTuplesRead", "indexScans", "liveRows", "seqScanRatio"],
        "none",
    )
    ratio = report["cacheHitRatio"]
    lines.append("== Buffer cache hit ratio")
    for kind in ("tables", "indexes"):
        value = ratio[kind]
        lines.append(f"   {kind:<8} {'no reads yet' if value is None else f'{value:.2%}'}")
    lines.append("")
    lines.append("== Recommendations")
    lines.extend(f" - {r}" for r in report["recommendations"] or ["nothing to do"])
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)
