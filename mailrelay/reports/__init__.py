"""`mailrelay report`: per company and month, the referral KPIs as table, JSON, CSV or one HTML page."""

from mailrelay.reports.data import MonthRow, TenantReport, build_report
from mailrelay.reports.render import render

__all__ = ["MonthRow", "TenantReport", "build_report", "render"]
