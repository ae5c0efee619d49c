"""Rejection detection: rules (data) loaded from rules/*.toml, compiled once, matched on normalised text.

INTERFACE STUB: the relay is written against these names; the implementation replaces the bodies.
Rules decide, stages change: nothing here ever edits a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Mode = Literal["decorate", "shadow"]


@dataclass(frozen=True)
class DetectionInput:
    subject: str  # decoded
    plain: str  # decoded main text/plain body
    html: str  # decoded main text/html source (reduced to visible text by detection)
    header: Callable[[str], list[str]]  # top-level header values by name (decoded)
    sender: str  # envelope MAIL FROM, as received
    tenant: str | None  # tenant id the sender belongs to, if any


@dataclass(frozen=True)
class Verdict:
    rejection: bool  # a rule in mode "decorate" matched and was not vetoed
    rule: str | None = None  # id of that rule
    footer: str | None = None  # footer name that rule selects
    fired: tuple[str, ...] = ()  # phrases (as written in the rule file) that fired
    vetoed: tuple[tuple[str, str], ...] = ()  # (rule id, veto phrase) for rules that hit but were vetoed
    shadow: tuple[str, ...] = ()  # ids of shadow-mode rules that matched (counted, never acted on)
    details: tuple[str, ...] = field(default=())  # human-readable explanation lines for `check --explain`


class RuleSet:
    def __init__(self) -> None:
        raise NotImplementedError

    @property
    def ids(self) -> tuple[str, ...]:
        raise NotImplementedError

    def evaluate(self, item: DetectionInput) -> Verdict:
        raise NotImplementedError


def load_rules(paths: Iterable[Path], footers: set[str] | None = None) -> RuleSet:
    """Load and validate rule files; raises mailrelay.errors.ConfigError(file, (rule, field), problem).

    `footers`: footer names that exist; a rule selecting another one is an error (None: not checked)."""
    raise NotImplementedError
