"""The report as a text table, JSON, CSV, or one self-contained HTML page with inline SVG charts (no
script, no external file: it can be mailed to finance or opened offline)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from mailrelay.reports.data import MonthRow, TenantReport

COLUMNS = (
    ("month", "Month"),
    ("rejections_seen", "Rejection mails"),
    ("applicants_referred", "Referred"),
    ("slots_earned", "Slots earned"),
    ("slots_used", "Slots used"),
    ("slots_left", "Slots left"),
    ("clicks_people", "Clicks (people)"),
    ("clicks_scanners", "Clicks (scanners)"),
    ("registrations", "Registrations"),
    ("registration_rate", "Registration rate"),
    ("follow_up_rate", "Follow-up rate"),
)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value * 100:.1f}%"
    return str(value)


def render(reports: Sequence[TenantReport], fmt: str) -> str:
    if fmt == "json":
        return render_json(reports)
    if fmt == "csv":
        return render_csv(reports)
    if fmt == "html":
        return render_html(reports)
    return render_table(reports)


def _rows(report: TenantReport) -> list[MonthRow]:
    return [*report.months, report.total()]


def render_json(reports: Sequence[TenantReport]) -> str:
    data = [
        {
            "tenant": r.tenant_id,
            "name": r.name,
            "referral_ratio": r.ratio,
            "months": [m.as_dict() for m in r.months],
            "total": r.total().as_dict(),
        }
        for r in reports
    ]
    return json.dumps({"tenants": data}, ensure_ascii=False, indent=2) + "\n"


def render_csv(reports: Sequence[TenantReport]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(["tenant", *(key for key, _title in COLUMNS)])
    for r in reports:
        for m in r.months:
            d = m.as_dict()
            writer.writerow([r.tenant_id, *("" if d[key] is None else d[key] for key, _t in COLUMNS)])
    return out.getvalue()


def render_table(reports: Sequence[TenantReport]) -> str:
    lines: list[str] = []
    for r in reports:
        lines.append(f"{r.name} ({r.tenant_id}), {r.ratio} referrals = 1 slot")
        table = [[title for _key, title in COLUMNS]]
        for m in _rows(r):
            d = m.as_dict()
            table.append([_cell(d[key]) for key, _t in COLUMNS])
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
        for row in table:
            lines.append(
                "  ".join(
                    c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        lines.append("")
    return "\n".join(lines)


# ---- HTML ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,'Noto Sans JP',sans-serif;margin:2em;color:#1f2933;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:1em 0}
th,td{border:1px solid #cbd2d9;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.total td{font-weight:bold;background:#f5f7fa}
.charts{display:flex;flex-wrap:wrap;gap:2em}figure{margin:0}figcaption{font-size:.9em;color:#52606d}
svg text{font-size:11px;fill:#1f2933}
"""


def _bar_chart(report: TenantReport) -> str:
    """Referrals per month (bars) and free slots left at each month's end (line)."""
    months = report.months
    width, height, left, bottom, top = max(320, 60 + 48 * len(months)), 240, 40, 40, 20
    plot_h = height - bottom - top
    peak = max([1, *(m.referred for m in months), *(m.slots_left for m in months)])
    step = (width - left - 10) / max(len(months), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-referrals" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Referrals and slots left per month">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 5}" y2="{top + plot_h}" stroke="#9aa5b1"/>',
        f'<text x="4" y="{top + 4}">{peak}</text><text x="4" y="{top + plot_h}">0</text>',
    ]
    points = []
    for i, m in enumerate(months):
        x = left + i * step
        h = plot_h * max(m.referred, 0) / peak
        parts.append(
            f'<rect class="bar" data-month="{m.month}" data-value="{m.referred}" x="{x + step * 0.15:.1f}" '
            f'y="{top + plot_h - h:.1f}" width="{step * 0.7:.1f}" height="{h:.1f}" fill="#3e7cb1">'
            f"<title>{m.month}: {m.referred} referred</title></rect>"
        )
        parts.append(f'<text x="{x + step * 0.1:.1f}" y="{height - 22}">{m.month}</text>')
        points.append(f"{x + step / 2:.1f},{top + plot_h - plot_h * max(m.slots_left, 0) / peak:.1f}")
    if points:
        parts.append(
            f'<polyline class="slots" points="{" ".join(points)}" fill="none" stroke="#e07a1f" '
            'stroke-width="2"/>'
        )
    parts.append(
        f'<rect x="{left}" y="{height - 12}" width="10" height="10" fill="#3e7cb1"/>'
        f'<text x="{left + 14}" y="{height - 3}">referred</text>'
        f'<rect x="{left + 90}" y="{height - 12}" width="10" height="10" fill="#e07a1f"/>'
        f'<text x="{left + 104}" y="{height - 3}">slots left</text></svg>'
    )
    return "".join(parts)


def _funnel(total: MonthRow) -> str:
    """Rejection mails → with a link → referred → people who clicked → registered, for the period."""
    steps = [
        ("Rejection mails", total.rejections_seen),
        ("With a link", total.rejections_linked if total.rejections_seen is not None else None),
        ("Applicants referred", total.referred),
        ("Clicked (people)", total.clicks_people),
        ("Registered", total.registrations),
    ]
    values = [v for _label, v in steps if v is not None]
    peak = max([1, *values])
    width, row_h = 460, 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-funnel" width="{width}" '
        f'height="{row_h * len(steps) + 10}" role="img" aria-label="Registration funnel">'
    ]
    for i, (label, value) in enumerate(steps):
        y = 5 + i * row_h
        w = 0.0 if value is None else (width - 170) * value / peak
        parts.append(
            f'<text x="0" y="{y + 18}">{escape(label)}</text>'
            f'<rect class="step" data-step="{escape(label)}" data-value="{"" if value is None else value}" '
            f'x="130" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="#52a675"/>'
            f'<text x="{135 + w:.1f}" y="{y + 18}">{_cell(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(reports: Sequence[TenantReport], now: datetime | None = None) -> str:
    made = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>Referral report</h1><p>Made {made}. Months are UTC calendar months.</p>"]
    for r in reports:
        total = r.total()
        body.append(
            f'<section class="tenant" data-tenant="{escape(r.tenant_id)}">'
            f"<h2>{escape(r.name)} ({escape(r.tenant_id)})</h2>"
            f'<p class="summary">{r.ratio} referrals earn 1 free slot. Slots left now: '
            f'<strong class="slots-left">{total.slots_left}</strong>.</p>'
        )
        body.append(
            "<table><thead><tr>"
            + "".join(f"<th>{escape(t)}</th>" for _k, t in COLUMNS)
            + "</tr></thead><tbody>"
        )
        for m in _rows(r):
            d = m.as_dict()
            cls = ' class="total"' if m.month == "total" else ""
            body.append(
                f"<tr{cls}>"
                + "".join(f'<td data-col="{k}">{escape(_cell(d[k]))}</td>' for k, _t in COLUMNS)
                + "</tr>"
            )
        body.append('</tbody></table><div class="charts">')
        body.append(
            f"<figure>{_bar_chart(r)}<figcaption>Applicants referred and free slots left, by month"
            "</figcaption></figure>"
        )
        body.append(
            f"<figure>{_funnel(total)}<figcaption>Registration funnel for the period</figcaption></figure>"
        )
        body.append("</div></section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>mailrelay referral report</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
