"""`mailrelay report` in every format, on SQLite and PostgreSQL; the HTML page rendered in headless
Chromium (Debian package chromium) and checked for what it shows."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_store import db_url, referral, store

from mailrelay.reports import TenantReport, build_report, render
from mailrelay.store import EventStore, ledger
from mailrelay.store.models import Click, ReferralEvent, Registration

__all__ = ["db_url", "store"]  # fixtures

JAN, FEB = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 10, tzinfo=UTC)
TENANTS = {"acme": ("Acme株式会社", 10)}


def fill(store: EventStore) -> None:
    """January: 8 rejection mails (6 with a link) to 6 applicants. February: 7 mails, all linked, to 7
    applicants, one of them already referred in January (13 events, 12 referrals: 1 slot), 1 slot
    redeemed; 3 people clicked (one twice) and 2 scanners; 2 registered."""

    def write(session: Session) -> None:
        events = {}
        applicants = [*range(6), 0, *range(100, 106)]
        for n, applicant in enumerate(applicants):
            month = JAN if n < 6 else FEB
            event = ReferralEvent(
                created_at=month,
                tenant_id="acme",
                token=f"tok{n:013d}",
                rule_id="ja",
                message_id=None,
                recipient_hash=f"{applicant:064d}",
                recipient=None,
                fingerprint=f"{n:064d}",
                next_hop_reply="250 ok",
            )
            session.add(event)
            session.flush()
            ledger.count_referral(
                session,
                tenant_id=event.tenant_id,
                recipient_hash=event.recipient_hash,
                event_id=event.id,
                created_at=event.created_at,
                window=timedelta(days=180),
            )
            events[n] = event.id
        ledger.redeem(session, "acme", 10, "Sato", "placement 2026-02", datetime(2026, 2, 20, tzinfo=UTC))
        for n, scanner in [(6, False), (7, False), (7, False), (0, False), (8, True), (9, True)]:
            session.add(
                Click(
                    created_at=FEB,
                    tenant_id="acme",
                    referral_event_id=events[n],
                    method="GET",
                    scanner=scanner,
                    scanner_reason="agent" if scanner else None,
                )
            )
        for k, n in enumerate([6, 0]):
            session.add(
                Registration(
                    created_at=FEB, tenant_id="acme", referral_event_id=events[n], webhook_id=f"msg_{k}"
                )
            )

    store.transaction(write)
    for i in range(8):
        store.rejection_seen("acme", i < 6, f"j{i}", JAN)
    for i in range(7):
        store.rejection_seen("acme", True, f"f{i}", FEB)
    store.rejection_seen("acme", False, "f0", FEB)  # a retry of a decorated message: still one, linked


def report(store: EventStore, **kwargs: object) -> list[TenantReport]:
    return store.transaction(lambda s: build_report(s, TENANTS, **kwargs))  # type: ignore[arg-type]


def test_the_numbers_per_month(store: EventStore) -> None:
    fill(store)
    [acme] = report(store, start=date(2026, 1, 1), end=date(2026, 2, 28))
    jan, feb = (m.as_dict() for m in acme.months)
    assert jan == {
        "month": "2026-01",
        "rejections_seen": 8,
        "applicants_referred": 6,
        "slots_earned": 0,
        "slots_used": 0,
        "slots_left": 0,
        "clicks_people": 0,
        "clicks_scanners": 0,
        "registrations": 0,
        "registration_rate": 0.0,
        "follow_up_rate": 0.75,
    }
    assert feb == {
        "month": "2026-02",
        "rejections_seen": 7,
        "applicants_referred": 6,
        "slots_earned": 1,
        "slots_used": 1,
        "slots_left": 0,
        "clicks_people": 3,
        "clicks_scanners": 2,
        "registrations": 2,
        "registration_rate": round(2 / 6, 4),
        "follow_up_rate": 1.0,
    }
    total = acme.total()
    assert (total.referred, total.slots_earned, total.slots_used, total.slots_left) == (12, 1, 1, 0)
    # February alone still knows January's referrals: its slot is earned from the running total.
    [feb_only] = report(store, start=date(2026, 2, 1), end=date(2026, 2, 28))
    assert [(m.month, m.slots_earned, m.slots_left) for m in feb_only.months] == [("2026-02", 1, 0)]


def test_a_slot_earned_before_from_is_not_earned_again_in_the_period(store: EventStore) -> None:
    """The 10th referral on 5 February earned the slot: a report from the 15th showed it earned again
    (slots earned in a partial month came from the whole month's ledger), so the reports of 1-14 and
    15-28 February together claimed two slots for one."""
    store.write(
        [referral(f"t{i}", f"{i:064x}", f"{i:064x}") for i in range(10)],
        mark_delivered=False,
        at=datetime(2026, 2, 5, tzinfo=UTC),
    )
    store.write(
        [referral("t10", f"{10:064x}", f"{10:064x}")], mark_delivered=False, at=FEB + timedelta(days=10)
    )
    [early] = report(store, start=date(2026, 2, 1), end=date(2026, 2, 14))
    [late] = report(store, start=date(2026, 2, 15), end=date(2026, 2, 28))
    assert [(m.referred, m.slots_earned, m.slots_left) for m in early.months] == [(10, 1, 1)]
    assert [(m.referred, m.slots_earned, m.slots_left) for m in late.months] == [(1, 0, 1)]


def test_without_rejection_counts_the_follow_up_rate_is_unknown(store: EventStore) -> None:
    store.transaction(
        lambda s: ledger.correct(
            s, "acme", referrals=3, slots_adjusted=0, slots_used=0, by="x", reason="y", now=JAN
        )
    )
    [acme] = report(store, start=date(2026, 1, 1), end=date(2026, 1, 31))
    d = acme.months[0].as_dict()
    assert d["rejections_seen"] is None and d["follow_up_rate"] is None and d["applicants_referred"] == 3
    assert "–" in render([acme], "table")


def test_a_person_who_clicked_in_two_months_is_one_person_of_the_period(store: EventStore) -> None:
    """The total of "Clicks (people)" added up the months' distinct counts: an applicant who clicked
    their link in January and again in February was two people of the period."""
    assert store.write([referral("t1", "a" * 64)], mark_delivered=False, at=JAN) == 1

    def click(session: Session) -> None:
        event = session.scalars(select(ReferralEvent.id)).one()
        for moment in (JAN, JAN + timedelta(days=1), FEB):
            session.add(
                Click(
                    created_at=moment, tenant_id="acme", referral_event_id=event, method="GET", scanner=False
                )
            )

    store.transaction(click)
    [acme] = report(store, start=date(2026, 1, 1), end=date(2026, 2, 28))
    assert [m.clicks_people for m in acme.months] == [1, 1]
    assert acme.total().clicks_people == 1
    assert json.loads(render([acme], "json"))["tenants"][0]["total"]["clicks_people"] == 1
    [people] = re.findall(r'data-step="Clicked \(people\)" data-value="(\d+)"', render([acme], "html"))
    assert people == "1"


def test_table_json_and_csv(store: EventStore) -> None:
    fill(store)
    reports = report(store, start=date(2026, 1, 1), end=date(2026, 2, 28))
    table = render(reports, "table")
    assert "Acme株式会社 (acme)" in table and "75.0%" in table and "33.3%" in table
    data = json.loads(render(reports, "json"))
    assert data["tenants"][0]["total"]["applicants_referred"] == 12
    rows = list(csv.DictReader(io.StringIO(render(reports, "csv"))))
    assert [(r["tenant"], r["month"], r["applicants_referred"], r["slots_left"]) for r in rows] == [
        ("acme", "2026-01", "6", "0"),
        ("acme", "2026-02", "6", "0"),
    ]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: the HTML report test needs the Debian package chromium")
    return path


def run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def test_the_html_report_renders_in_chromium(store: EventStore, tmp_path: Path) -> None:
    fill(store)
    html = render(report(store, start=date(2026, 1, 1), end=date(2026, 2, 28)), "html")
    # Self-contained: no script, no external file of any kind.
    assert "<script" not in html and not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")

    dom = run_chromium("--dump-dom", page.as_uri()).stdout
    assert "Acme株式会社 (acme)" in dom
    assert re.search(r'class="slots-left">0<', dom)
    bars = re.findall(r'<rect class="bar" data-month="([\d-]+)" data-value="(\d+)"', dom)
    assert bars == [("2026-01", "6"), ("2026-02", "6")]
    steps = re.findall(r'<rect class="step" data-step="([^"]+)" data-value="(\d*)"', dom)
    assert steps == [
        ("Rejection mails", "15"),
        ("With a link", "13"),
        ("Applicants referred", "12"),
        ("Clicked (people)", "3"),
        ("Registered", "2"),
    ]
    assert re.search(r'<polyline class="slots" points="[\d., ]+"', dom)

    shot = tmp_path / "report.png"
    run_chromium("--window-size=1200,900", f"--screenshot={shot}", page.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # a drawn page, not an empty one


def test_the_report_command_writes_every_format(
    store: EventStore, tmp_path: Path, make_settings: object
) -> None:
    from mailrelay import cli

    fill(store)
    settings_path = tmp_path / "config.toml"
    make_settings(database_url=store.url)  # type: ignore[operator]
    for fmt in ("table", "json", "csv", "html"):
        out = tmp_path / f"report.{fmt}"
        status = cli.main(
            [
                "report",
                "--config",
                str(settings_path),
                "--tenant",
                "acme",
                "--from",
                "2026-01-01",
                "--to",
                "2026-02-28",
                "--format",
                fmt,
                "--output",
                str(out),
            ]
        )
        assert status == 0
        assert "acme" in out.read_text(encoding="utf-8")
