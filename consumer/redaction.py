"""Redaction: hides secrets and personal data from logs (the last structlog processor),
dead-letter headers and error texts. `Redactor.scrub` is the one scrubbing entry point.

Two rules keep it cheap whatever it is given (a vendor's 100 MB error page, a huge traceback):
- Truncate first, then scan. Only a bounded window of the text is ever scanned (the part that is
  kept, plus a small margin so a value cut by the bound is still recognised whole); the rest is
  replaced by a visible `…[truncated N chars]` marker.
- Every pattern is linear in its input. A pattern may only start where the character before it
  cannot belong to it (a look-behind), so the scan from one start never overlaps the scan from
  another; quantified parts are unambiguous, so a failed attempt backtracks at most once over
  what it read. The unit tests run each pattern over 1 MB of adversarial text.

What is scrubbed: configured secrets and any literal `values` given (longest first, anywhere in
the text; values of two or three characters only as whole words, shorter ones never), e-mail
addresses, IPv6 addresses in every form (validated by `ipaddress`), IPv4 addresses, and phone
numbers (see `_phone`: the rule that keeps order numbers, prices and timestamps readable).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

REDACTED = "[redacted]"
MAX_VALUE_CHARS = 4096
"""The longest string rendered for one value; the rest is cut before scanning."""
SCAN_MARGIN = 256
"""Scanned beyond the cut so a secret or address straddling it is recognised (e-mail ≤ 254)."""

# Starts only after a character that cannot be part of an e-mail's local part.
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
# A candidate: an optional `word:` prefix (`ip:fe80::1`), then hex digits, colons and dots with
# at least one colon, then an optional zone (`%eth0`). `ipaddress` decides what is an address.
IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.%])(?P<prefix>[^\W\d]\w*:)?"
    r"(?P<address>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[\w-]+(?:\.[\w-]+)*)?)"
)
IPV6_MAX_CHARS = 64  # 45 for the longest textual IPv6 address, plus a zone
_SEPARATOR = r"(?:[ .-]|\)[ .-]?|[ .-]?\()"
_NATIONAL_SEPARATOR = r"(?:[ -]|\)[ -]?|[ -]?\()"
PHONE_INTERNATIONAL = re.compile(rf"(?<![\w+])\+\d+(?:{_SEPARATOR}\d+)*")
PHONE_NATIONAL = re.compile(rf"(?<![\w+.,-])\(?0\d+(?:{_NATIONAL_SEPARATOR}\d+)+")
DATE_LIKE = re.compile(r"\(?\d{2}-\d{2}-\d{4}")  # dd-mm-yyyy is a date, not a phone number
DIGITS = re.compile(r"\d+")


SENSITIVE_KEYS = frozenset(
    {
        "email", "phone", "ip", "first_name", "last_name", "name", "customer", "address",
        "api_key", "api_secret", "secret", "token", "password", "authorization", "site_key",
        "session_token", "headers",
    }
)  # fmt: skip
MAX_ITEMS = 100
"""The most entries of one list or dict rendered; the rest are counted, not shown."""
TRACEBACK_HEAD, TRACEBACK_TAIL = 4096, 8192
"""A rendered traceback keeps its start and its end: the last lines say what failed."""


class Redactor:
    """Scrubs configured secrets, given values and personal-data patterns from text; as a
    structlog processor, from every key and value of an event (dropping `SENSITIVE_KEYS`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        self._secrets = frozenset(s for s in secrets if len(s) >= 4)
        self._sorted_secrets = sorted(self._secrets, key=len, reverse=True)

    def scrub(self, text: str, values: Iterable[str] = (), *, limit: int = MAX_VALUE_CHARS) -> str:
        """`text` cut to `limit` characters (with a marker), without secrets, `values` (e.g. the
        personal values of the orders a vendor refused) or personal-data patterns."""
        return self.scrub_bounded(text, values, head=limit)

    def scrub_bounded(
        self, text: str, values: Iterable[str] = (), *, head: int, tail: int = 0
    ) -> str:
        """Like `scrub`, keeping the first `head` and the last `tail` characters (a traceback's
        last lines say what failed)."""
        literals, short = self._literals(values)
        if len(text) <= head + tail:
            return _scan(text, literals, short)
        margin = max(SCAN_MARGIN, max(map(len, literals), default=0))
        kept = _cut(_scan(text[: head + margin], literals, short), head)
        marker = f"…[truncated {len(text) - head - tail} chars]"
        if tail:
            end = _scan(text[-(tail + margin) :], literals, short)
            kept += marker + "…" + _cut_front(end, tail)
            return kept
        return kept + marker

    def _literals(self, values: Iterable[str]) -> tuple[list[str], re.Pattern[str] | None]:
        """Literals to replace anywhere (longest first, so one containing another goes whole),
        and a whole-word pattern for two- and three-character values (`CA`, `Li`)."""
        # Each value also as a text that collapsed its whitespace would show it ("Mary  Jane",
        # "Saint\u00a0Denis" read as "Mary Jane", "Saint Denis").
        given = {form for v in values for form in (v.strip(), " ".join(v.split()))}
        if not given:  # the common case: a log line, no order at hand
            return self._sorted_secrets, None
        long = self._secrets | {v for v in given if len(v) >= 4}
        words = sorted((v for v in given if 2 <= len(v) < 4), key=len, reverse=True)
        short = None
        if words:
            alternatives = "|".join(map(re.escape, words))
            short = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
        return sorted(long, key=len, reverse=True), short

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, dict):
            items = list(value.items())
            rendered = {
                self._key(k): REDACTED if k in SENSITIVE_KEYS else self._value(v)
                for k, v in items[:MAX_ITEMS]
            }
            if len(items) > MAX_ITEMS:
                rendered["…"] = f"[{len(items) - MAX_ITEMS} more entries]"
            return rendered
        if isinstance(value, list | tuple):
            shown = [self._value(v) for v in value[:MAX_ITEMS]]
            if len(value) > MAX_ITEMS:
                shown.append(f"…[{len(value) - MAX_ITEMS} more items]")
            return shown
        if isinstance(value, bytes | bytearray):
            value = bytes(value[: MAX_VALUE_CHARS + 1])  # repr of the bound, not of it all
        return self.scrub(str(value))

    def _key(self, key: Any) -> Any:
        return self.scrub(key, limit=200) if isinstance(key, str) else key

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            value = event_dict[key]
            if key in SENSITIVE_KEYS:
                event_dict[key] = REDACTED
            elif key == "exception" and isinstance(value, str):
                event_dict[key] = self.scrub_bounded(
                    value, head=TRACEBACK_HEAD, tail=TRACEBACK_TAIL
                )
            else:
                event_dict[key] = self._value(value)
        return event_dict


def _scan(text: str, literals: list[str], short: re.Pattern[str] | None) -> str:
    """Replace literals and patterns; linear in `text` (callers bound it first)."""
    for literal in literals:
        if literal in text:
            text = text.replace(literal, REDACTED)
    if short is not None:
        text = short.sub(REDACTED, text)
    text = EMAIL.sub(REDACTED, text)
    text = IPV6_CANDIDATE.sub(_ipv6, text)
    text = PHONE_INTERNATIONAL.sub(lambda m: _phone(m, minimum=8), text)  # before `1.23.45.67`
    text = IPV4.sub(REDACTED, text)
    return PHONE_NATIONAL.sub(_national_phone, text)


def _cut(text: str, limit: int) -> str:
    """The first `limit` characters, not splitting a `[redacted]` mark."""
    start = text.find(REDACTED, max(0, limit - len(REDACTED) + 1), limit + len(REDACTED) - 1)
    return text[: start + len(REDACTED)] if -1 < start < limit else text[:limit]


def _cut_front(text: str, limit: int) -> str:
    """The last `limit` characters, not splitting a `[redacted]` mark."""
    begin = len(text) - limit
    start = text.rfind(REDACTED, max(0, begin - len(REDACTED) + 1), begin + len(REDACTED) - 1)
    return text[start:] if start != -1 and start < begin else text[begin:]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ipv6(match: re.Match[str]) -> str:
    """Redact the address in a candidate: the prefix may belong to it (`dead:beef::1`) or be a
    label (`ip:`), and prose may end it with a dot or a colon (`from ::1.`)."""
    whole, address = match.group(0), match.group("address")
    if len(address) > IPV6_MAX_CHARS:
        return whole
    prefix = match.group("prefix") or ""
    for label, body in (("", whole), (prefix, address)):
        for trailing in ("", ".", ".:"):
            core = body.rstrip(trailing) if trailing else body
            if core.count(":") >= 2 and _is_ip(core):
                return label + REDACTED + body[len(core) :]
    return whole


def _phone(match: re.Match[str], *, minimum: int) -> str:
    """A phone number has 8 to 15 digits (E.164 allows 15; `+` form) or 9 to 15 (national, leading
    0). A candidate that runs on into more digits (`+358 40 123 4567 100 200`) keeps its longest
    prefix of digit groups within 15 digits, so a number followed by others is still hidden."""
    text = match.group(0)
    digits = end = 0
    for group in DIGITS.finditer(text):
        if digits + len(group.group(0)) > 15:
            break
        digits += len(group.group(0))
        end = group.end()
    if digits < minimum:
        return text
    return REDACTED + text[end:]


def _national_phone(match: re.Match[str]) -> str:
    if DATE_LIKE.match(match.group(0)):
        return match.group(0)
    return _phone(match, minimum=9)


REDACTOR = Redactor()
"""The one redactor: the log processor, and the scrubber of dead-letter headers and error texts.
`consumer.logs.configure` gives it the configured secrets."""
