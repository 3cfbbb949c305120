"""Secrets and personal data are scrubbed from any text, and a huge text costs no more than a
small one: it is cut to a bound before it is scanned, and every pattern is linear."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import redaction
from consumer.model import Address
from consumer.redaction import MAX_VALUE_CHARS, REDACTED, SCAN_MARGIN, Redactor
from tests.factories import make_customer, make_order

MB = 1_000_000
ADVERSARIAL = {
    "word characters": "a" * MB,
    "digits": "1" * MB,
    "dots": "a." * (MB // 2),
    "at signs": "a@" * (MB // 2),
    "colons": "1:" * (MB // 2),
    "hex and colons": "ab:" * (MB // 3),
    "plus and digits": "+1 " * (MB // 3),
    "zeros and separators": "0(0)-" * (MB // 5),
    "everything": "a1.:@+-( )%" * (MB // 11),
}


def test_a_long_text_is_cut_to_the_bound_with_a_visible_marker() -> None:
    text = "x" * MB
    scrubbed = Redactor().scrub(text)
    assert scrubbed.startswith("x" * MAX_VALUE_CHARS)
    assert scrubbed.endswith(f"…[truncated {MB - MAX_VALUE_CHARS} chars]")
    assert len(scrubbed) < MAX_VALUE_CHARS + 40


def test_scanning_only_ever_sees_the_bounded_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work is bounded by the truncation, whatever the input's size (a 100 MB vendor body)."""
    seen: list[int] = []
    scan = redaction._scan

    def spy(text: str, *args: object) -> str:
        seen.append(len(text))
        return scan(text, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(redaction, "_scan", spy)
    Redactor(["sup3r-s3cret-key"]).scrub("a@" * (50 * MB))
    assert seen
    assert max(seen) <= MAX_VALUE_CHARS + SCAN_MARGIN


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_every_pattern_is_linear_on_a_megabyte_of_adversarial_text(name: str) -> None:
    """Scanned whole, without the truncation: a quadratic pattern takes minutes here, a linear
    one a fraction of a second (the bound is only a generous guard)."""
    text = ADVERSARIAL[name]
    started = time.monotonic()
    redaction._scan(text, ["sup3r-s3cret-key"], None)
    assert time.monotonic() - started < 2.0


def test_the_redactor_on_a_megabyte_of_adversarial_text_completes_at_once() -> None:
    started = time.monotonic()
    for text in ADVERSARIAL.values():
        assert len(Redactor().scrub(text)) < MAX_VALUE_CHARS + 40
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("offset", [-20, -5, -1, 0])
def test_a_value_cut_by_the_bound_is_still_scrubbed_whole(offset: int) -> None:
    for leak in ("sup3r-s3cret-key", "leon.gomes@example.com", "2001:db8::42"):
        text = "x " * ((MAX_VALUE_CHARS + offset) // 2) + leak + " y" * 5000
        scrubbed = Redactor(["sup3r-s3cret-key"]).scrub(text)
        assert leak[:4] not in scrubbed.replace("x ", "").replace(" y", ""), (leak, offset)


@pytest.mark.parametrize(
    "phone",
    [
        "+358 40 123 4567",
        "+358401234567",
        "+1 (555) 010-9999",
        "+44 20 7946 0958",
        "+33.1.23.45.67.89",
        "040-1234567",
        "040 123 4567",
        "(040) 123 4567",
        "09 1234567",
        "00358 40 123 4567",
    ],
)
def test_phone_numbers_in_international_and_national_formats_are_scrubbed(phone: str) -> None:
    assert Redactor().scrub(f"call {phone}, thanks") == f"call {REDACTED}, thanks"


@pytest.mark.parametrize(
    "text",
    [
        "order SO-0401234567 and order 100234 and 0000123456",
        "total 1234.50 EUR, unit 0.123456789, 1 234 567,00",
        "at 2026-11-27T10:00:00Z (+02:00), epoch 1700000000, 1700000000123 ms",
        "date 01-07-2026 10:00",
        "+5 items, +100 points",
        "line 12 of 40, HTTP 404",
    ],
)
def test_ordinary_numbers_are_not_mistaken_for_phone_numbers(text: str) -> None:
    assert Redactor().scrub(text) == text


def test_a_phone_number_followed_by_more_digits_is_still_scrubbed() -> None:
    assert REDACTED in Redactor().scrub("+358 40 123 4567 100 200 300")
    assert "4567" not in Redactor().scrub("+358 40 123 4567 100 200 300")


@pytest.mark.parametrize(
    "address",
    [
        "2001:db8::42",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "::1",
        "::",
        "fe80::1%eth0",
        "::ffff:192.0.2.1",
        "64:ff9b::192.0.2.33",
        "2001:db8::",
    ],
)
@pytest.mark.parametrize("context", ["{} here", "ip={}.", "ip:{}", "[{}]:8080", '"{}"'])
def test_ipv6_addresses_in_every_form_are_scrubbed(address: str, context: str) -> None:
    scrubbed = Redactor().scrub(context.format(address))
    assert scrubbed == context.format(REDACTED)


@pytest.mark.parametrize(
    "text", ["10:00:00", "00:1a:2b:3c:4d:5e", "std::vector", "Foo::Bar", "a:b", "sha256:abcd"]
)
def test_times_mac_addresses_and_scoped_names_are_not_ipv6(text: str) -> None:
    assert Redactor().scrub(text) == text


def test_given_values_are_scrubbed_short_ones_only_as_whole_words() -> None:
    scrubbed = Redactor().scrub(
        "Li from CA (Oulu) sent CASE 7 for Lisa, token tok-123456",
        values=["Li", "CA", "Oulu", "Lisa", "tok-123456", "7", " "],
    )
    assert scrubbed == (
        f"{REDACTED} from {REDACTED} ({REDACTED}) sent CASE 7 for {REDACTED}, token {REDACTED}"
    )


def test_an_orders_personal_values_are_scrubbed_from_a_vendor_message() -> None:
    order = make_order(
        customer=make_customer(email="Leon.Gomes@Example.com", ip="203.0.113.9, 10.0.0.1"),
        nibble_session_token="cookie-123",
    )
    message = (
        "rejected: Leon Gomes <Leon.Gomes@Example.com> customer A501 session cookie-123 "
        "from 203.0.113.9, 10.0.0.1 phone +358401234567"
    )
    scrubbed = Redactor().scrub(message, values=order.personal_values())
    for value in ("Leon", "Gomes", "A501", "cookie-123", "203.0.113.9", "+358401234567"):
        assert value not in scrubbed


def test_personal_values_lists_every_non_blank_personal_field() -> None:
    order = make_order(
        customer=make_customer(id="A501", email="a@example.com", phone="+358401234567",
                               first_name="Leon", last_name="  ", ip="203.0.113.9, 10.0.0.1"),
        nibble_session_token="cookie-123",
    )  # fmt: skip
    values = order.personal_values()
    assert set(values) == {"a@example.com", "+358401234567", "Leon", "A501",
                           "203.0.113.9, 10.0.0.1", "203.0.113.9", "10.0.0.1",
                           "Los Angeles", "California", "cookie-123"}  # fmt: skip
    assert "" not in values
    anonymous = make_order(customer=make_customer(email=None, phone=None, first_name=None,
                                                  last_name=None, id=None, ip=None),
                           address=Address(country="FI"), nibble_session_token=None)  # fmt: skip
    assert anonymous.personal_values() == ()


SECRET = "sup3r-s3cret-key-0042"


@settings(max_examples=300, deadline=None)
@given(
    before=st.integers(min_value=0, max_value=3 * MAX_VALUE_CHARS),
    after=st.integers(min_value=0, max_value=3 * MAX_VALUE_CHARS),
    filler=st.sampled_from(["x", " ", "ab.", "é"]),
    tail=st.sampled_from([0, 100, 2048]),
)
def test_no_part_of_a_secret_survives_wherever_the_cut_falls(
    before: int, after: int, filler: str, tail: int
) -> None:
    text = (filler * before)[:before] + SECRET + (filler * after)[:after]
    scrubbed = Redactor([SECRET]).scrub_bounded(text, head=MAX_VALUE_CHARS, tail=tail)
    for start in range(len(SECRET) - 5):
        assert SECRET[start : start + 6] not in scrubbed
    assert len(scrubbed) <= MAX_VALUE_CHARS + tail + len(REDACTED) * 2 + 40
