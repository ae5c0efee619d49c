"""Rejection detection: rules (data) loaded from rules/*.toml, compiled once, matched on normalised text.

Rules decide, stages change: nothing here ever edits a message. See rules/README.md for the rule language.
"""

from __future__ import annotations

from mailrelay.detection.html_text import html_to_text
from mailrelay.detection.loader import load_rules
from mailrelay.detection.matcher import RuleSet, message_texts
from mailrelay.detection.model import DetectionInput, HeaderSignal, Mode, Phrase, Rule, Verdict
from mailrelay.detection.normalise import normalise, strip_quoted

__all__ = [
    "DetectionInput",
    "HeaderSignal",
    "Mode",
    "Phrase",
    "Rule",
    "RuleSet",
    "Verdict",
    "html_to_text",
    "load_rules",
    "message_texts",
    "normalise",
    "strip_quoted",
]
