"""The detection data model: what detection reads, the compiled rule, and the verdict it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["decorate", "shadow"]
Place = Literal["subject", "body"]

MODES: tuple[Mode, ...] = ("decorate", "shadow")
PLACES: tuple[Place, ...] = ("subject", "body")


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


@dataclass(frozen=True)
class Phrase:
    """A phrase as HR wrote it and as it is matched (normalised once, at load)."""

    written: str
    key: str


@dataclass(frozen=True)
class HeaderSignal:
    """A header an applicant tracking system sets: present with one of `values`, it decides on its own."""

    name: str
    values: tuple[Phrase, ...]


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    mode: Mode
    footer: str
    file: str
    language: str | None = None
    look_in: tuple[Place, ...] = PLACES
    require: tuple[tuple[Phrase, ...], ...] = ()
    exclude: tuple[Phrase, ...] = ()
    senders: tuple[str, ...] = ()  # casefolded "user@domain" or "@domain"
    tenants: tuple[str, ...] = ()
    header: HeaderSignal | None = None
