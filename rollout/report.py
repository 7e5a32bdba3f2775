"""One self-contained HTML page per release: why the gates decided what they decided.

Built from the release's ledger record only (samples, verdicts, incident), so a report can be
written for any release in the history, on any machine, after the fact.

The charts are drawn by matplotlib into inline SVG (text kept as text, so the page stays small
and searchable). A hand-written SVG did for three polylines; charts a reviewer reads at a
glance need axes with real ticks, percent and millisecond formatting, shaded confidence bands,
step bands, limit lines, a log scale for e-values and a legend, which is what a plotting
library is for.
"""

from __future__ import annotations

import html
import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from rollout.ledger import Release

COLOURS = {
    "canary": "#d9480f",
    "stable": "#1c7ed6",
    "limit": "#c92a2a",
    "weight": "#5c940d",
    "band": "#ffa94d",
    "fail": "#c92a2a",
    "pass": "#2b8a3e",
    "latency": "#7048e8",
}
SVG_PARAMS: dict[str, Any] = {"svg.fonttype": "none", "svg.hashsalt": "portal-report"}


# ------------------------------------------------------------------------------ formatting


def pct(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}%}"


def ms(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    return "∞" if math.isinf(v) else f"{v:.0f} ms"


def evalue(value: Any) -> str:
    """An e-value for people: 0.42, 3.1, 1,250, 2.4e+07."""
    if value is None:
        return "-"
    v = float(value)
    if v >= 1e6:
        return f"{v:.2g}"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2g}" if v < 10 else f"{v:.1f}"


def _fmt_check_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "error_rate":
        return pct(value)
    if name == "p95_latency":
        return ms(value)
    v = float(value)
    return f"{v:.0f}" if v.is_integer() else f"{v:.4g}"


def _fmt_cs(name: str, cs: Any) -> str:
    if not cs:
        return "-"
    lo, hi = cs
    if name == "error_rate":
        return f"{float(lo):+.2%} .. {float(hi):+.2%}"
    if name == "p95_latency":
        return f"{ms(lo)} .. {ms(hi) if hi is not None else '∞'}"
    return "-"


def _when(ts: Any) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------ charts


def _svg(fig: Figure, title: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(SVG_PARAMS):  # type: ignore[arg-type]
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    body = buf.getvalue()
    body = body[body.index("<svg") :]
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{body}</figure>"


def _frame(
    steps: Sequence[tuple[float, float, str]], decision: tuple[float, str, bool] | None
) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.6, 2.5), dpi=96)
    ax = fig.add_subplot()
    for i, (x0, x1, label) in enumerate(steps):
        ax.axvspan(x0, x1, color="#f1f3f5" if i % 2 == 0 else "#e9ecef", zorder=0, lw=0)
        ax.text(
            (x0 + x1) / 2,
            1.0,
            label,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="#495057",
        )
    if decision is not None:
        at, label, failed = decision
        colour = COLOURS["fail"] if failed else COLOURS["pass"]
        ax.axvline(at, color=colour, lw=1.5, ls="--", zorder=5)
        ax.annotate(
            label,
            (at, 0.5),
            xycoords=("data", "axes fraction"),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color=colour,
            rotation=90,
            va="center",
        )
    ax.set_xlabel("seconds since the release started", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#dee2e6", lw=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _series(samples: Sequence[dict[str, Any]], *path: str) -> list[float | None]:
    out: list[float | None] = []
    for s in samples:
        v: Any = s
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        out.append(None if v is None else float(v))
    return out


def _clean(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """The points that have a value, the last one held for half a check interval (a step line
    would otherwise end where the last check, often the decisive one, begins)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    px, py = [p[0] for p in pairs], [p[1] for p in pairs]
    if px:
        px.append(px[-1] + _spacing(xs) / 2)
        py.append(py[-1])
    return px, py


def _spacing(xs: Sequence[float]) -> float:
    gaps = sorted(b - a for a, b in itertools.pairwise(xs) if b > a)
    return gaps[len(gaps) // 2] if gaps else 1.0


def _band(
    ax: Any,
    xs: Sequence[float],
    lo: Sequence[float | None],
    hi: Sequence[float | None],
    top: float,
    colour: str,
    label: str,
) -> None:
    px, plo, phi = [], [], []
    for x, a, b in zip(xs, lo, hi, strict=True):
        if a is None:
            continue
        px.append(x)
        plo.append(a)
        phi.append(top if b is None or not math.isfinite(b) else b)
    if px:
        px.append(px[-1] + _spacing(xs) / 2)
        plo.append(plo[-1])
        phi.append(phi[-1])
        ax.fill_between(px, plo, phi, step="post", color=colour, alpha=0.35, lw=0, label=label)


def charts(release: dict[str, Any]) -> list[str]:
    samples = [s for s in release.get("samples") or [] if "at" in s]
    if not samples:
        return []
    start = float(release.get("created_at") or samples[0]["at"])
    xs = [float(s["at"]) - start for s in samples]
    bands = _step_bands(release, start, xs, samples)
    decision = _decision(release, start)

    stats = [s.get("stats") or {} for s in samples]
    frame = _Frame(xs, samples, stats, bands, decision)
    out = []
    if any(st.get("error_rate") for st in stats):
        out += _error_charts(frame)
    if any(st.get("p95_latency") for st in stats):
        out += _latency_charts(frame)
    fig, ax = _frame(bands, decision)
    px, py = _clean(xs, _series(samples, "weight"))
    ax.step(px, py, where="post", color=COLOURS["weight"], lw=1.8)
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f}%"))
    out.append(_svg(fig, "Canary weight"))
    return out


@dataclass(frozen=True)
class _Frame:
    """What every chart of one release shares: the time axis, the samples and the bands."""

    xs: list[float]
    samples: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    bands: Any
    decision: Any


def _error_charts(f: _Frame) -> list[str]:
    """The difference with its confidence sequence against the margin, and both tracks' rates
    against the limit."""
    xs, samples, stats, bands, decision = f.xs, f.samples, f.stats, f.bands, f.decision
    out = []
    fig, ax = _frame(bands, decision)
    lo = [(st.get("error_rate") or {}).get("cs", [None, None])[0] for st in stats]
    hi = [(st.get("error_rate") or {}).get("cs", [None, None])[1] for st in stats]
    _band(ax, xs, lo, hi, 1.0, COLOURS["band"], "confidence sequence")
    cx, cy = _clean(xs, _series(samples, "stats", "error_rate", "difference"))
    ax.step(cx, cy, where="post", color=COLOURS["canary"], lw=1.6, label="canary - stable")
    ax.plot(cx[:-1], cy[:-1], "o", color=COLOURS["canary"], ms=2.5)
    margin = next((st["error_rate"].get("margin") for st in stats if st.get("error_rate")), None)
    if margin is not None:
        ax.axhline(margin, color=COLOURS["limit"], lw=1.2, label=f"margin +{margin:.2%}")
    ax.axhline(0, color="#868e96", lw=0.8)
    finite = [v for v in (*cy, *(x for x in hi if x is not None)) if v is not None]
    top = max([*(v for v in finite if v < 1), (margin or 0.01) * 3])
    bottom = min([*(v for v in (x for x in lo if x is not None)), -(margin or 0.01)])
    ax.set_ylim(max(bottom, -top), top)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:+.1%}"))
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    out.append(_svg(fig, "Error rate, canary minus stable, with its confidence sequence"))

    fig, ax = _frame(bands, decision)
    lo = [(st.get("error_rate") or {}).get("canary_cs", [None, None])[0] for st in stats]
    hi = [(st.get("error_rate") or {}).get("canary_cs", [None, None])[1] for st in stats]
    _band(ax, xs, lo, hi, 1.0, COLOURS["band"], "canary: confidence sequence")
    for key, colour, label in (
        ("estimate", COLOURS["canary"], "canary"),
        ("stable", COLOURS["stable"], "stable"),
    ):
        px, py = _clean(xs, _series(samples, "stats", "error_rate", key))
        ax.step(px, py, where="post", color=colour, lw=1.6, label=label)
    px, py = _clean(xs, _series(samples, "stats", "error_rate", "limit"))
    ax.step(px, py, where="post", color=COLOURS["limit"], lw=1.2, label="limit")
    slo = next((st["error_rate"].get("slo") for st in stats if st.get("error_rate")), 0.02)
    ax.set_ylim(0, max(float(slo) * 2.5, *(py or [0.0])))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.1%}"))
    ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=4)
    out.append(_svg(fig, "Error rate this release: canary, stable and the limit"))
    return out


def _latency_charts(f: _Frame) -> list[str]:
    """The canary's p95 with its confidence sequence against the limit, and the e-values
    against the level a FAIL needs."""
    xs, samples, stats, bands, decision = f.xs, f.samples, f.stats, f.bands, f.decision
    out = []
    fig, ax = _frame(bands, decision)
    lat = [st.get("p95_latency") or {} for st in stats]
    est = [v for v in _series(samples, "stats", "p95_latency", "estimate") if v is not None]
    limits = [v for v in _series(samples, "stats", "p95_latency", "limit") if v is not None]
    top = max([*est, *limits, 100.0]) * 1.3
    lo = [(d.get("cs") or [None, None])[0] for d in lat]
    hi = [(d.get("cs") or [None, None])[1] for d in lat]
    _band(ax, xs, lo, hi, top, "#b197fc", "canary p95: confidence sequence")
    for key, colour, label in (
        ("estimate", COLOURS["canary"], "canary p95"),
        ("stable", COLOURS["stable"], "stable p95"),
        ("limit", COLOURS["limit"], "limit"),
    ):
        px, py = _clean(xs, _series(samples, "stats", "p95_latency", key))
        ax.step(px, py, where="post", color=colour, lw=1.6 if key != "limit" else 1.2, label=label)
    ax.set_ylim(0, top)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f} ms"))
    ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=4)
    out.append(_svg(fig, "p95 latency this release, with the canary's confidence sequence"))

    fig, ax = _frame(bands, decision)
    level = next((float(st["level"]) for st in stats if st.get("level")), None)
    for path, colour, label in (
        (("error_rate", "evalue", "slo"), COLOURS["canary"], "errors over the SLO"),
        (("error_rate", "evalue", "margin"), "#f08c00", "errors over stable + margin"),
        (("p95_latency", "evalue"), COLOURS["latency"], "p95 over the limit"),
    ):
        px, py = _clean(xs, _series(samples, "stats", *path))
        py = [max(v, 1e-3) for v in py]
        if px:
            ax.step(px, py, where="post", color=colour, lw=1.5, label=label)
    if level:
        ax.axhline(level, color=COLOURS["limit"], lw=1.2, label=f"FAIL at {level:,.0f}")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, max(1e6, (level or 1) * 100))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: evalue(v)))
    ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=2)
    out.append(_svg(fig, "Evidence: e-values against each limit (a FAIL needs the red line)"))
    return out


def _step_bands(
    release: dict[str, Any], start: float, xs: Sequence[float], samples: Sequence[dict[str, Any]]
) -> list[tuple[float, float, str]]:
    """One band per step: from its weight being set to the next step's (or the last sample)."""
    sets = [
        (float(t.get("done_at") or t["at"]) - start, t["args"].get("step"), t["args"]["weight"])
        for t in release.get("transitions") or []
        if t.get("action") == "set_weight" and "weight" in (t.get("args") or {})
    ]
    end = max(xs) if xs else 0.0
    if not sets:  # older records: from each step's first sample
        firsts: dict[Any, tuple[float, Any]] = {}
        for x, s in zip(xs, samples, strict=True):
            firsts.setdefault(s.get("step"), (x, s.get("weight")))
        sets = [(x, step, w) for step, (x, w) in firsts.items()]
    bands = []
    for i, (x0, step, weight) in enumerate(sets):
        x1 = sets[i + 1][0] if i + 1 < len(sets) else end
        label = f"step {int(step) + 1} · {weight}%" if step is not None else f"{weight}%"
        bands.append((x0, max(x1, x0), label))
    return bands


def _decision(release: dict[str, Any], start: float) -> tuple[float, str, bool] | None:
    failed = next((v for v in release.get("verdicts") or [] if v.get("verdict") == "FAIL"), None)
    if failed is not None:
        check = next(
            (c.get("name") for c in failed.get("checks") or [] if c.get("verdict") == "FAIL"),
            failed.get("gate"),
        )
        at = float(failed["at"]) - start
        return at, f"FAIL at {at:.0f} s: {check}", True
    if release.get("status") == "PROMOTED" and release.get("ended_at"):
        at = float(release["ended_at"]) - start
        return at, f"promoted at {at:.0f} s", False
    return None


# ------------------------------------------------------------------------------ the page


def _incident(incident: dict[str, Any]) -> str:
    values = incident.get("values") or {}
    check = incident.get("check") or ""
    shown = ", ".join(
        f"{k} {_fmt_check_value(check, v)}" for k, v in values.items() if v is not None
    )
    rows = [
        ("reason", incident.get("reason")),
        ("gate", incident.get("gate")),
        ("check", check),
        ("values", shown or "-"),
        ("query", incident.get("query")),
        ("runbook", incident.get("runbook")),
    ]
    body = "".join(
        f"<dt>{html.escape(k)}</dt><dd>"
        + (
            f"<code>{html.escape(str(v))}</code>"
            if k == "query" and v
            else html.escape(str(v or "-"))
        )
        + "</dd>"
        for k, v in rows
    )
    actions = incident.get("actions") or []
    if actions:
        body += (
            "<dt>actions</dt><dd><ul>"
            + "".join(
                f"<li>{_when(a.get('at'))}: {html.escape(str(a.get('action')))} - "
                f"{html.escape(str(a.get('detail')))} ({html.escape(str(a.get('by')))})</li>"
                for a in actions
            )
            + "</ul></dd>"
        )
    return f"<h2>Incident</h2><dl>{body}</dl>"


def render(release: dict[str, Any]) -> str:
    samples = release.get("samples") or []
    start = float(release.get("created_at") or (samples[0]["at"] if samples else 0))
    rows = []
    for v in release.get("verdicts") or []:
        for c in v.get("checks") or []:
            name = str(c.get("name") or "")
            verdict = str(c.get("verdict") or "")
            needed = c.get("needed")
            ev = c.get("evalue")
            cells = (
                f"{float(v['at']) - start:.1f} s",
                f"{v.get('weight')}%",
                str(v.get("gate")),
                name,
                verdict,
                _fmt_check_value(name, c.get("value")),
                _fmt_check_value(name, c.get("threshold")),
                _fmt_check_value(name, c.get("baseline")),
                "-" if ev is None else f"{evalue(ev)} / {evalue(needed)}",
                _fmt_cs(name, c.get("cs")),
            )
            cls = {"FAIL": "fail", "PASS": "pass"}.get(verdict, "other")
            rows.append(
                f'<tr class="{cls}">'
                + "".join(f"<td>{html.escape(x)}</td>" for x in cells)
                + f"<td>{html.escape(str(c.get('detail') or ''))}"
                + (f"<br><code>{html.escape(c['query'])}</code>" if c.get("query") else "")
                + "</td></tr>"
            )
    incident = release.get("incident")
    status = release.get("status", "?")
    colour = {"PROMOTED": "#2b8a3e", "ABORTED": "#c92a2a"}.get(status, "#e67700")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Release {html.escape(release.get("id", ""))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #212529; max-width: 70em; }}
figure {{ margin: 1.2em 0; }} figcaption {{ font-weight: 600; margin-bottom: .3em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #dee2e6; padding: 3px 6px; text-align: left; vertical-align: top; }}
tr.fail td {{ background: #fff5f5; }} tr.other td {{ background: #fff9db; }}
code {{ font-size: 11px; color: #495057; }}
dt {{ font-weight: 600; }} dd {{ margin: 0 0 .5em 1em; }}
.status {{ color: {colour}; font-weight: 700; }}
</style></head><body>
<h1>Release {html.escape(release.get("id", ""))}: {html.escape(str(release.get("version")))}
 <span class="status">{html.escape(status)}</span></h1>
<p>Started {_when(release.get("created_at"))}, ended {_when(release.get("ended_at"))}.
Previous stable: {html.escape(str((release.get("previous_stable") or {}).get("version")))}.
Steps: {html.escape(", ".join(release.get("steps") or []))}.
{html.escape(release.get("reason") or "")}</p>
{"".join(charts(release))}
{_incident(incident) if incident else ""}
<h2>Gate verdicts</h2>
<p>Each metrics check is an anytime-valid test: FAIL once an e-value reaches the level shown
(1 / (alpha / 4)); the confidence sequence is the canary-minus-stable error rate, or the range
the canary's p95 is in.</p>
<table><tr><th>at</th><th>weight</th><th>gate</th><th>check</th><th>verdict</th><th>canary</th>
<th>limit</th><th>stable</th><th>e-value / needed</th><th>confidence sequence</th>
<th>detail</th></tr>
{"".join(rows)}
</table>
</body></html>
"""


def write_report(release: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(release))
    return path


def file_reporter(folder: Path) -> Callable[[Release], str]:
    """The release engine's reporter: each release's report as ``<folder>/<id>.html``."""

    def write(release: Release) -> str:
        path = write_report(release.model_dump(mode="json"), folder / f"{release.id}.html")
        return str(path.resolve())

    return write
