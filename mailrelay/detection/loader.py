"""rules/*.toml → validated, compiled rules; each problem is a ConfigError naming file › rule › field."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from mailrelay.detection.matcher import RuleSet
from mailrelay.detection.model import MODES, PLACES, HeaderSignal, Mode, Phrase, Place, Rule
from mailrelay.detection.normalise import normalise
from mailrelay.errors import ConfigError

RULE_KEYS = frozenset(
    {
        "id", "description", "mode", "language", "look_in", "require", "exclude", "footer", "senders",
        "tenants", "header",
    }
)  # fmt: skip
# What a file's [defaults] may set for all its rules; a rule's own value wins, except `exclude`, which adds.
DEFAULT_KEYS = frozenset({"mode", "language", "look_in", "exclude", "footer"})
HEADER_KEYS = frozenset({"name", "values"})
# Rule ids are metric labels and log words: keep them short and plain. Both are used with fullmatch: `$`
# also matches before a final newline, which let `id = "ats\n"` and a header name ending in one through.
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 field name: printable ASCII except ":"
_TOML_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


Tenants = Mapping[str, Collection[str]]


def load_rules(paths: Iterable[Path], tenants: Tenants | None = None) -> RuleSet:
    """Load and validate rule files; raises mailrelay.errors.ConfigError(file, (rule, field), problem).

    Files are read in name order and rules kept in file order: the first matching decorate rule wins.
    `tenants`: each tenant id with the footer names it defines (None: neither is checked). A rule naming
    another tenant is an error, and so is a footer missing from a tenant the rule applies to (the tenants
    it names, or every tenant): that tenant's rejections would find no footer when the rule fires."""
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: (p.name, str(p))):
        for rule in _load_file(path, tenants):
            if rule.id in seen:
                raise ConfigError(
                    rule.file, (rule.id, "id"), f"duplicate id (first defined in {seen[rule.id]})"
                )
            seen[rule.id] = rule.file
            rules.append(rule)
    return RuleSet(rules)


def _load_file(path: Path, tenants: Tenants | None) -> list[Rule]:
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(file, (), f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(file, (), f"not UTF-8 (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_LINE.search(message)
        if where is None:
            raise ConfigError(file, (), f"invalid TOML: {message}") from exc
        line, column = where.groups()
        problem = f"invalid TOML: {message[: where.start()]} (column {column})"
        raise ConfigError(file, (f"line {line}",), problem) from exc
    for key in data:
        if key not in ("rule", "defaults"):
            raise ConfigError(
                file, (key,), "unknown key (expected [[rule]] tables and an optional [defaults])"
            )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(file, ("defaults",), "must be a table")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise ConfigError(
                file, ("defaults", key), f"unknown key (allowed: {', '.join(sorted(DEFAULT_KEYS))})"
            )
    tables = data.get("rule")
    if tables is None:
        raise ConfigError(file, (), "no [[rule]] table")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(file, ("rule",), "must be an array of tables ([[rule]])")
    # Checked here, once, so that an error in [defaults] names `defaults`, not the first rule that uses it.
    shared = _Fields(file, "defaults", defaults)
    shared_values = _common(shared)
    if tenants is not None and "footer" in shared_values:
        # Only whether it exists at all: which tenants must have it depends on each rule's scope.
        _check_footer(shared, shared_values["footer"], tenants, (), scoped=False)
    shared_exclude = shared.phrases("exclude") if "exclude" in defaults else ()
    return [
        _rule(file, n, cast(dict[str, Any], t), shared_values, shared_exclude, tenants)
        for n, t in enumerate(tables, 1)
    ]


class _Fields:
    """Typed access to one table's values; errors name file › where › field."""

    def __init__(self, file: str, where: str, table: dict[str, Any]) -> None:
        self.file = file
        self.where = where
        self.table = table

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, (self.where, key), problem)

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_kind(value)}")
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def texts(self, key: str) -> list[str]:
        value = self.table[key]
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of strings, not {_kind(value)}")
        if not value:
            raise self.error(key, "must not be an empty list")
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"must be a list of strings, found {_kind(item)}")
            if not item.strip():
                raise self.error(key, "contains an empty string")
        return value

    def phrases(self, key: str, group: int | None = None) -> tuple[Phrase, ...]:
        written = self.texts(key) if group is None else self.table[key][group]
        out: list[Phrase] = []
        for item in written:
            phrase = Phrase(item, normalise(item))
            if not phrase.key:
                raise self.error(key, f"phrase {item!r} is empty once normalised")
            out.append(phrase)
        return tuple(out)


def _rule(
    file: str,
    number: int,
    table: dict[str, Any],
    defaults: dict[str, Any],
    shared_exclude: tuple[Phrase, ...],
    tenants: Tenants | None,
) -> Rule:
    raw_id = table.get("id")
    where = f"rule #{number}"
    if isinstance(raw_id, str) and raw_id:
        # repr() for an id that is not one printable line (`"ats\n"`), so that the error stays one line.
        where = raw_id if raw_id.isprintable() else repr(raw_id)
    f = _Fields(file, where, table)
    for key in table:
        if key not in RULE_KEYS:
            raise f.error(key, f"unknown key (allowed: {', '.join(sorted(RULE_KEYS))})")
    if raw_id is None:
        raise f.error("id", "missing")
    rule_id = f.text("id", raw_id)
    if not _ID.fullmatch(rule_id):
        raise f.error("id", "use 1-64 characters a-z, 0-9, '.', '_', '-' (starting with a letter or digit)")
    if "description" not in table:
        raise f.error("description", "missing (say what the rule catches, for the people who review it)")
    description = f.text("description", table["description"])

    merged = {**defaults, **_common(f)}
    if "mode" not in merged:
        raise f.error("mode", 'missing ("decorate" or "shadow")')
    mode: Mode = merged["mode"]
    if "footer" not in merged:
        raise f.error("footer", "missing (the name of the footer this rule selects)")
    footer: str = merged["footer"]
    language: str | None = merged.get("language")
    look_in: tuple[Place, ...] = merged.get("look_in", PLACES)

    require: list[tuple[Phrase, ...]] = []
    if "require" in table:
        groups = table["require"]
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise f.error("require", 'must be a list of phrase lists, e.g. [["a", "b"], ["c"]]')
        if not groups:
            raise f.error("require", "must not be an empty list")
        for n, group in enumerate(groups):
            if not group:
                raise f.error("require", f"group {n + 1} is empty")
            for item in group:
                if not isinstance(item, str):
                    raise f.error("require", f"group {n + 1} must hold strings, found {_kind(item)}")
                if not item.strip():
                    raise f.error("require", f"group {n + 1} contains an empty string")
            require.append(f.phrases("require", n))

    exclude = shared_exclude + (f.phrases("exclude") if "exclude" in table else ())

    senders: tuple[str, ...] = ()
    if "senders" in table:
        for sender in f.texts("senders"):
            _local, at, domain = sender.strip().rpartition("@")
            if not at or not domain or "." not in domain or " " in sender.strip():
                raise f.error("senders", f"{sender!r} is not an address or an @domain")
        senders = tuple(s.strip().casefold() for s in f.texts("senders"))
    scope = tuple(f.texts("tenants")) if "tenants" in table else ()
    if tenants is not None:
        for tenant in scope:
            if tenant not in tenants:
                known = ", ".join(sorted(tenants)) or "none"
                raise f.error("tenants", f"unknown tenant {tenant!r} (defined: {known})")
        _check_footer(f, footer, tenants, scope or tuple(tenants), scoped=bool(scope))

    header: HeaderSignal | None = None
    if "header" in table:
        header = _header(file, where, table["header"])
    if not require and header is None:
        raise f.error("require", "missing (a rule needs phrase groups, a [rule.header] signal, or both)")

    return Rule(
        id=rule_id,
        description=description,
        mode=mode,
        footer=footer,
        file=file,
        language=language,
        look_in=look_in,
        require=tuple(require),
        exclude=exclude,
        senders=senders,
        tenants=scope,
        header=header,
    )


def _common(f: _Fields) -> dict[str, Any]:
    """The values a rule or its file's [defaults] may set, validated where they are written."""
    values: dict[str, Any] = {}
    if "mode" in f.table:
        mode = f.table["mode"]
        if mode not in MODES:
            raise f.error("mode", f'unknown mode {mode!r} (use "decorate" or "shadow")')
        values["mode"] = cast(Mode, mode)
    if "footer" in f.table:
        values["footer"] = f.text("footer", f.table["footer"])
    if "language" in f.table:
        values["language"] = f.text("language", f.table["language"])
    if "look_in" in f.table:
        places = f.texts("look_in")
        for place in places:
            if place not in PLACES:
                raise f.error("look_in", f'unknown place {place!r} (use "subject" and/or "body")')
        values["look_in"] = tuple(p for p in PLACES if p in places)
    return values


def _check_footer(f: _Fields, footer: str, tenants: Tenants, scope: Iterable[str], *, scoped: bool) -> None:
    """Every tenant in `scope` has `footer` (its own [tenants.footers] or the shared [footers]): a rule
    that fires for a tenant without it would fail open at the footer stage."""
    defined = {name for names in tenants.values() for name in names}
    if footer not in defined:
        known = ", ".join(sorted(defined)) or "none"
        raise f.error("footer", f"unknown footer {footer!r} (defined: {known})")
    for tenant in scope:
        if footer not in tenants[tenant]:
            has = ", ".join(sorted(tenants[tenant])) or "none"
            why = "listed in this rule's tenants" if scoped else "a rule without tenants applies to all"
            raise f.error("footer", f"tenant {tenant!r} has no footer {footer!r} (it has: {has}; {why})")


def _header(file: str, where: str, value: Any) -> HeaderSignal:
    if not isinstance(value, dict):
        raise ConfigError(
            file, (where, "header"), f"must be a table with name and values, not {_kind(value)}"
        )
    h = _Fields(file, where, value)
    for key in value:
        if key not in HEADER_KEYS:
            raise ConfigError(file, (where, f"header.{key}"), "unknown key (allowed: name, values)")
    for key in ("name", "values"):
        if key not in value:
            raise ConfigError(file, (where, f"header.{key}"), "missing")
    h.where = where
    try:
        name = h.text("name", value["name"])
        values = h.phrases("values")
    except ConfigError as exc:
        raise ConfigError(file, (where, f"header.{exc.where[-1]}"), exc.problem) from None
    if not _HEADER_NAME.fullmatch(name):
        raise ConfigError(file, (where, "header.name"), f"{name!r} is not a header field name")
    return HeaderSignal(name, values)


def _kind(value: Any) -> str:
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)  # fmt: skip
