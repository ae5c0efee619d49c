"""Matching compiled rules against one message: normalise once, look every phrase up once, decide."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailrelay.detection.html_text import html_to_text
from mailrelay.detection.model import DetectionInput, Place, Rule, Verdict
from mailrelay.detection.normalise import normalise, same_normalised, strip_quoted


@dataclass(frozen=True)
class Texts:
    """One message's normalised subject and body, and which phrase keys occur in each."""

    subject: str
    body: str


def message_texts(item: DetectionInput) -> Texts:
    """Body = the plain part and the HTML part's visible text, both (a sender's two parts may differ, and
    either may be a stub such as "view this mail in HTML"); quoted reply history is left out of both."""
    parts = [strip_quoted(item.plain)] if item.plain else []
    if item.html:
        parts.append(strip_quoted(html_to_text(item.html)))
    # A multipart/alternative's two parts usually say the same words; then every phrase is in both or in
    # neither, and searching one saves a third of a 20 KB mail's detection (issue 8). Most often they differ
    # only in where the lines break, which comparing their words sees before normalising the second: on
    # 2,800 characters of Japanese the comparison costs ~55 µs and normalising ~140.
    if len(parts) == 2 and same_normalised(parts[0], parts[1]):
        del parts[1]
    bodies = [normalise(p) for p in parts]
    if len(bodies) == 2 and bodies[0] == bodies[1]:
        del bodies[1]
    # NUL never survives normalise(), so no phrase can match across the plain/HTML seam.
    return Texts(normalise(item.subject), "\x00".join(bodies))


class RuleSet:
    """Rules in evaluation order (files by name, rules in file order), compiled once."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        subject: set[str] = set()
        body: set[str] = set()
        for rule in self.rules:
            keys = {p.key for group in rule.require for p in group}
            if "subject" in rule.look_in:
                subject |= keys
            if "body" in rule.look_in:
                body |= keys
            # A veto is looked for everywhere: a trap word in the subject vetoes a body match, too.
            subject |= {p.key for p in rule.exclude}
            body |= {p.key for p in rule.exclude}
        self._subject_keys = _by_pivot(subject)
        self._body_keys = _by_pivot(body)
        # Each rule's require groups and excludes as key sets: a group is ruled out by one intersection with
        # the few keys a message holds, not by a test per phrase (5 rules of 361 phrases cost 30 µs of a
        # 5 KB mail's 134 µs that way; issue 8).
        self._group_keys = tuple(
            tuple(frozenset(p.key for p in group) for group in rule.require) for rule in self.rules
        )
        self._exclude_keys = tuple(frozenset(p.key for p in rule.exclude) for rule in self.rules)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(rule.id for rule in self.rules)

    def evaluate(self, item: DetectionInput, *, explain: bool = False) -> Verdict:
        """The verdict on one message; with `explain`, also its `details` (for `mailrelay check --explain`).
        The relay does not ask for them: the lines cost 3-15 µs of every message's 150-550 µs (issue 8)."""
        texts = message_texts(item)
        in_subject = _present(self._subject_keys, texts.subject)
        in_body = _present(self._body_keys, texts.body)
        winner: Rule | None = None
        fired: tuple[str, ...] = ()
        vetoed: list[tuple[str, str]] = []
        shadow: list[str] = []
        lines: list[str] = []
        # The keys each rule may see: by where it looks; a veto is looked for in subject and body alike.
        everywhere = in_subject | in_body
        pools: dict[tuple[Place, ...], set[str]] = {("subject", "body"): everywhere}
        for rule, group_keys, exclude_keys in zip(
            self.rules, self._group_keys, self._exclude_keys, strict=True
        ):
            tag = f"rule {rule.id} [{rule.mode}]" if explain else ""
            if not _in_scope(rule, item):
                if explain:
                    lines.append(f"{tag}: not applied (sender or tenant outside its scope)")
                continue
            header_hit = _header_hit(rule, item)
            if header_hit is not None:
                hits: tuple[str, ...] = (header_hit,)
            else:
                pool = pools.get(rule.look_in)
                if pool is None:
                    pool = pools[rule.look_in] = _pool(rule.look_in, in_subject, in_body)
                if not group_keys or not all(keys & pool for keys in group_keys):
                    if explain and any(keys & pool for keys in group_keys):
                        missing = next(n for n, keys in enumerate(group_keys) if not keys & pool)
                        group = [p.written for p in rule.require[missing]]
                        more = f" | … {len(group) - 6} more" if len(group) > 6 else ""
                        wanted = " | ".join(group[:6]) + more
                        lines.append(f"{tag}: no match, group {missing + 1} missing ({wanted})")
                    continue
                hits = tuple(p.written for group in rule.require for p in group if p.key in pool)
                # An ATS header is authoritative; phrases are not, so they can be vetoed.
                if exclude_keys & everywhere:
                    vetoes = [p.written for p in rule.exclude if p.key in everywhere]
                    vetoed.append((rule.id, vetoes[0]))
                    if explain:
                        lines.append(f"{tag}: vetoed by {_quote(vetoes)} (had matched {_quote(hits)})")
                    continue
            if rule.mode == "shadow":
                shadow.append(rule.id)
                if explain:
                    lines.append(f"{tag}: matched {_quote(hits)} (shadow: counted, not acted on)")
            elif winner is None:
                winner, fired = rule, hits
                if explain:
                    lines.append(f"{tag}: matched {_quote(hits)} → footer {rule.footer!r}")
            elif explain:
                lines.append(f"{tag}: matched {_quote(hits)} (an earlier rule already decided)")
        if winner is None:
            head = "verdict: not a rejection" + (" (no rule matched)" if not lines else "")
            details = (head, *lines) if explain else ()
            return Verdict(False, vetoed=tuple(vetoed), shadow=tuple(shadow), details=details)
        head = f"verdict: rejection, rule {winner.id} ({winner.description}), footer {winner.footer!r}"
        return Verdict(
            True,
            rule=winner.id,
            footer=winner.footer,
            fired=fired,
            vetoed=tuple(vetoed),
            shadow=tuple(shadow),
            details=(head, *lines) if explain else (),
        )


# Keys that share a pivot, each with where in it the pivot first stands.
PivotGroup = tuple[tuple[str, int], ...]
# A large group's keys by the text around their pivot: (offset of the pivot, width, keys by their first
# `width` characters). A key no longer than its width is found by the window alone.
Windows = tuple[tuple[int, int, dict[str, tuple[str, ...]]], ...]


@dataclass(frozen=True)
class Pivoted:
    """Each pivot with its keys, in pivot order and by pivot; and, for a group of many keys, their windows."""

    groups: tuple[tuple[str, PivotGroup], ...]
    by_pivot: dict[str, PivotGroup]
    windows: dict[str, Windows]


def _by_pivot(keys: set[str]) -> Pivoted:
    """Keys grouped by one rare character each (a kanji rather than a kana, a letter rather than a space):
    one single-character search rules out a whole group, so a message costs a few dozen searches, not one
    per phrase."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for key in sorted(keys):
        pivot = max(key, key=_rarity)
        groups.setdefault(pivot, []).append((key, key.index(pivot)))
    ordered = tuple((pivot, tuple(group)) for pivot, group in sorted(groups.items()))
    windows = {pivot: _windows(group) for pivot, group in ordered if len(group) >= _MANY_KEYS}
    return Pivoted(ordered, dict(ordered), windows)


def _windows(group: PivotGroup) -> Windows:
    shapes: dict[tuple[int, int], dict[str, list[str]]] = {}
    for key, offset in group:
        width = min(len(key), offset + 1 + _AFTER_PIVOT)
        shapes.setdefault((offset, width), {}).setdefault(key[:width], []).append(key)
    return tuple(
        (offset, width, {window: tuple(keys) for window, keys in table.items()})
        for (offset, width), table in sorted(shapes.items())
    )


def _rarity(char: str) -> int:
    if "\u4e00" <= char <= "\u9fff":
        return 4  # kanji
    if "\u30a0" <= char <= "\u30ff":
        return 3  # katakana
    if char in "jqxzkvbwyfgpmuc":
        return 2  # the rarer latin letters
    if char.isalnum() and char not in "aeiou":
        return 1
    return 0


# A pivot seen at most this often is followed to its places: a key is then compared where it would stand
# (startswith), not searched for along the whole text. Measured on the bench's Japanese mails (issue 8): a
# 20 KB rejection's body 160 -> 100 µs; more places than two cost more than they save.
_FEW_PLACES = 2
# A group of at least this many keys whose pivot stands at more places is looked up by the characters
# around each place (its windows) while that is cheaper than searching the text for each key: 20 keys of
# 採 (採用…), each searched for along 1,800 characters of a mail where 採 stands 11 times, took 12 µs;
# visiting the places takes 5 (issue 8). Fewer keys are cheaper searched for, one pass each.
_MANY_KEYS = 4
_CHARS_PER_PLACE = 1300
_AFTER_PIVOT = 2  # a window is the pivot, what stands before it in the key, and the two characters after


def _present(keys: Pivoted, text: str) -> set[str]:
    """The keys that occur in `text`. An Aho-Corasick automaton in C (pyahocorasick 2.3.1) over the same 361
    body keys found the same keys in a 20 KB mail's 2,700-character body in 78 µs against these pivots' 62,
    and in its non-matching variant in 81 against 57 (issue 8, 2026-12-03), so it is not used."""
    found: set[str] = set()
    find = text.find
    candidates: Iterable[tuple[str, PivotGroup]] = keys.groups
    if len(text) < len(keys.groups):
        # A subject is shorter than the list of pivots: look its characters up, not every pivot in it
        # (9 -> 3 µs a message; issue 8).
        by_pivot = keys.by_pivot
        candidates = [(char, by_pivot[char]) for char in set(text) if char in by_pivot]
    for pivot, group in candidates:
        at = find(pivot)
        if at < 0:
            continue
        places = [at]
        while len(places) <= _FEW_PLACES:
            at = find(pivot, at + 1)
            if at < 0:
                break
            places.append(at)
        if len(places) <= _FEW_PLACES:
            # Every occurrence of a key puts its pivot at one of these places.
            for key, offset in group:
                for at in places:
                    if at >= offset and text.startswith(key, at - offset):
                        found.add(key)
                        break
            continue
        windows = keys.windows.get(pivot)
        if windows is not None:
            # Visiting a place costs about what searching _CHARS_PER_PLACE characters for one key does.
            most = len(group) * len(text) // _CHARS_PER_PLACE
            while at >= 0 and len(places) <= most:
                at = find(pivot, at + 1)
                if at >= 0:
                    places.append(at)
            if at < 0:
                _look_around(text, places, windows, found)
                continue
        found.update(key for key, _offset in group if key in text)
    return found


def _look_around(text: str, places: list[int], windows: Windows, found: set[str]) -> None:
    """The keys of `windows` that stand at one of `places` (every place of their pivot in `text`)."""
    for at in places:
        for offset, width, table in windows:
            start = at - offset
            if start < 0:
                continue
            for key in table.get(text[start : start + width], ()):
                if len(key) == width or text.startswith(key, start):
                    found.add(key)


def _in_scope(rule: Rule, item: DetectionInput) -> bool:
    if rule.tenants and item.tenant not in rule.tenants:
        return False
    if not rule.senders:
        return True
    # The envelope sender arrives bare or in <>; `mailrelay check` passes a From: value with a display name.
    sender = item.sender.strip()
    if "<" in sender:
        sender = sender.rpartition("<")[2].partition(">")[0]
    sender = sender.strip().casefold()
    domain = sender.rpartition("@")[2]
    if not domain:
        return False
    for allowed in rule.senders:
        if allowed.startswith("@"):
            # "@example.com" covers its subdomains too (hr.example.com sends for example.com).
            if domain == allowed[1:] or domain.endswith("." + allowed[1:]):
                return True
        elif sender == allowed:
            return True
    return False


def _header_hit(rule: Rule, item: DetectionInput) -> str | None:
    if rule.header is None:
        return None
    wanted = {p.key: p.written for p in rule.header.values}
    for value in item.header(rule.header.name):
        if normalise(value) in wanted:
            return f"{rule.header.name}: {value.strip()}"
    return None


def _pool(look_in: tuple[Place, ...], in_subject: set[str], in_body: set[str]) -> set[str]:
    pool: set[str] = set()
    if "subject" in look_in:
        pool |= in_subject
    if "body" in look_in:
        pool |= in_body
    return pool


def _quote(phrases: Sequence[str]) -> str:
    return ", ".join(f"“{p}”" for p in phrases)
