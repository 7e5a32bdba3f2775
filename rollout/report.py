"""One self-contained HTML page per release: charts of canary vs stable and the gate verdicts.

Built from the release's ledger record only (samples, verdicts, incident), so a report can be
written for any release in the history, on any machine, after the fact.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, PAD = 640, 180, 40
COLOURS = {"canary": "#d9480f", "stable": "#1c7ed6", "weight": "#5c940d"}


def _points(
    xs: Sequence[float], ys: Sequence[float | None], x0: float, x1: float, y1: float
) -> str:
    out = []
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            continue
        px = PAD + (x - x0) / max(x1 - x0, 1e-9) * (WIDTH - 2 * PAD)
        py = HEIGHT - PAD + 10 - (y / max(y1, 1e-9)) * (HEIGHT - PAD - 10)
        out.append(f"{px:.1f},{py:.1f}")
    return " ".join(out)


def svg_chart(
    title: str,
    xs: Sequence[float],
    series: dict[str, Sequence[float | None]],
    unit: str,
    scale: float = 1.0,
) -> str:
    """A line chart; ``xs`` in seconds since the release started."""
    values = [v * scale for s in series.values() for v in s if v is not None]
    top = max(values) if values else 1.0
    top = top * 1.1 if top > 0 else 1.0
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    lines = []
    for i, (name, ys) in enumerate(series.items()):
        scaled = [None if v is None else v * scale for v in ys]
        colour = COLOURS.get(name.split()[0], "#495057")
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{_points(xs, scaled, x0, x1, top)}"/>'
        )
        lines.append(
            f'<text x="{PAD + 120 * i}" y="14" fill="{colour}" '
            f'font-size="12">{html.escape(name)}</text>'
        )
    axis = (
        f'<line x1="{PAD}" y1="{HEIGHT - PAD + 10}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD + 10}" '
        'stroke="#adb5bd"/>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11">0 s</text>'
        f'<text x="{WIDTH - PAD - 30}" y="{HEIGHT - 8}" font-size="11">{x1 - x0:.0f} s</text>'
        f'<text x="2" y="34" font-size="11">{top:.3g}{html.escape(unit)}</text>'
    )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">{axis}{"".join(lines)}</svg></figure>'
    )


def _when(ts: Any) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(release: dict[str, Any]) -> str:
    samples = release.get("samples") or []
    start = float(release.get("created_at") or (samples[0]["at"] if samples else 0))
    xs = [float(s["at"]) - start for s in samples]

    def col(key: str) -> list[float | None]:
        return [s.get(key) for s in samples]

    charts = [
        svg_chart(
            "Error rate (window so far)",
            xs,
            {"canary": col("canary_error_rate"), "stable": col("stable_error_rate")},
            " %",
            100.0,
        ),
        svg_chart(
            "p95 latency (window so far)",
            xs,
            {"canary": col("canary_p95_ms"), "stable": col("stable_p95_ms")},
            " ms",
        ),
        svg_chart("Canary weight", xs, {"weight": col("weight")}, " %"),
    ]
    rows = []
    for v in release.get("verdicts") or []:
        for c in v.get("checks") or []:
            value = c.get("value")
            threshold = c.get("threshold")
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(x))}</td>"
                    for x in (
                        f"{float(v['at']) - start:.1f}s",
                        v.get("weight"),
                        v.get("gate"),
                        c.get("name"),
                        c.get("verdict"),
                        "-" if value is None else f"{value:.4g}",
                        "-" if threshold is None else f"{threshold:.4g}",
                    )
                )
                + f"<td><code>{html.escape(c.get('query') or '')}</code></td></tr>"
            )
    incident = release.get("incident")
    incident_html = ""
    if incident:
        incident_html = (
            "<h2>Incident</h2><dl>"
            + "".join(
                f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(incident.get(k)))}</dd>"
                for k in ("reason", "gate", "check", "query", "values", "runbook")
            )
            + "</dl>"
        )
    status = release.get("status", "?")
    colour = {"PROMOTED": "#2b8a3e", "ABORTED": "#c92a2a"}.get(status, "#e67700")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Release {html.escape(release.get("id", ""))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #212529; }}
figure {{ margin: 1em 0; }} figcaption {{ font-weight: 600; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #dee2e6; padding: 3px 6px; text-align: left; }}
code {{ font-size: 11px; }}
.status {{ color: {colour}; font-weight: 700; }}
</style></head><body>
<h1>Release {html.escape(release.get("id", ""))}: {html.escape(str(release.get("version")))}
 <span class="status">{html.escape(status)}</span></h1>
<p>Started {_when(release.get("created_at"))}, ended {_when(release.get("ended_at"))}.
Previous stable: {html.escape(str((release.get("previous_stable") or {}).get("version")))}.
Steps: {html.escape(", ".join(release.get("steps") or []))}.
{html.escape(release.get("reason") or "")}</p>
{"".join(charts)}
{incident_html}
<h2>Gate verdicts</h2>
<table><tr><th>at</th><th>weight</th><th>gate</th><th>check</th><th>verdict</th><th>value</th>
<th>limit</th><th>query</th></tr>
{"".join(rows)}
</table>
</body></html>
"""


def write_report(release: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(release))
    return path
