"""Money at the vendor boundary: minor units, half-up rounding, plain decimal strings."""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.transform.money import (
    MINOR_UNIT_EXPONENTS,
    convert,
    decimal_string,
    hundredths,
    minor_unit_exponent,
    to_minor_units,
)

ZERO_DECIMALS = ["JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "XPF", "KMF", "GNF", "PYG",
                 "RWF", "VUV", "DJF", "BIF"]  # fmt: skip
THREE_DECIMALS = ["BHD", "KWD", "OMR", "JOD", "IQD", "LYD", "TND"]

avro_amounts = st.decimals(
    min_value=Decimal("-99999999999999.9999"),
    max_value=Decimal("99999999999999.9999"),
    places=4,
    allow_nan=False,
    allow_infinity=False,
)
currencies = st.sampled_from(["EUR", "USD", "GBP", *ZERO_DECIMALS, *THREE_DECIMALS])


@pytest.mark.parametrize("currency", ZERO_DECIMALS)
def test_zero_decimal_currencies_have_no_minor_unit(currency):
    assert minor_unit_exponent(currency) == 0


@pytest.mark.parametrize("currency", THREE_DECIMALS)
def test_three_decimal_currencies_count_thousandths(currency):
    assert minor_unit_exponent(currency) == 3


@pytest.mark.parametrize("currency", ["EUR", "USD", "GBP", "SEK", "CHF", "XYZ"])
def test_every_other_currency_counts_cents(currency):
    assert minor_unit_exponent(currency) == 2


def test_only_the_exceptions_are_listed():
    assert set(MINOR_UNIT_EXPONENTS) == {*ZERO_DECIMALS, *THREE_DECIMALS}


def test_currency_codes_are_read_case_insensitively():
    assert minor_unit_exponent(" jpy ") == 0


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("10.50", "EUR", 1050),
        ("0.125", "EUR", 13),  # half up, where round() would give 12
        ("0.135", "EUR", 14),
        ("2.5", "JPY", 3),  # round() would give 2
        ("1500", "JPY", 1500),
        ("1.0005", "KWD", 1001),
        ("-0.125", "EUR", -13),  # halves away from zero, like PHP round()
        ("0.0049", "EUR", 0),
        ("1E+3", "EUR", 100000),
        ("99999999999999.9999", "EUR", 10000000000000000),
    ],
)
def test_minor_units_round_halves_away_from_zero(amount, currency, expected):
    assert to_minor_units(Decimal(amount), currency) == expected


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("950.00", 95000), ("1500", 150000), ("1.2345", 123), ("0.505", 51), ("-0.125", -13),
     ("0.0049", 0), ("1E+3", 100000)],
)  # fmt: skip
def test_hundredths_are_the_amount_times_100_halves_away_from_zero(amount, expected):
    assert hundredths(Decimal(amount)) == expected


@given(avro_amounts)
def test_hundredths_ignore_the_currencys_own_minor_unit(amount):
    # Custobar's "cents" for every currency: the same as ISO minor units only for 2 decimals.
    assert hundredths(amount) == to_minor_units(amount, "EUR")
    assert hundredths(amount) == to_minor_units(amount.scaleb(-1), "KWD")
    assert hundredths(amount) == to_minor_units(amount.scaleb(2), "JPY")


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("10.5", "EUR", "10.50"),
        ("10.505", "USD", "10.51"),
        ("1500", "JPY", "1500"),
        ("1499.5", "JPY", "1500"),
        ("1.2345", "KWD", "1.235"),
        ("1E+3", "EUR", "1000.00"),
        ("1E-7", "EUR", "0.00"),
        ("-0.001", "EUR", "0.00"),  # never "-0.00"
        ("-5.005", "EUR", "-5.01"),
    ],
)
def test_decimal_strings_are_plain_and_in_the_currencys_precision(amount, currency, expected):
    assert decimal_string(Decimal(amount), currency) == expected


def test_conversion_keeps_full_precision_until_rounding():
    # 20.80 / 1.112 = 18.7050359...; rounding 18.705 first would give a different cent later.
    converted = convert(Decimal("20.80"), Decimal("1.112"))
    assert str(converted).startswith("18.70503597122302158273381294964")
    assert to_minor_units(converted, "EUR") == 1871


def test_results_do_not_depend_on_the_callers_decimal_context():
    with localcontext() as context:
        context.prec = 3
        assert to_minor_units(Decimal("123456.785"), "EUR") == 12345679
        assert decimal_string(Decimal("123456.785"), "EUR") == "123456.79"
        assert to_minor_units(convert(Decimal("100000"), Decimal("3")), "EUR") == 3333333


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_amounts_are_refused(bad):
    with pytest.raises(ValueError, match="finite"):
        to_minor_units(bad, "EUR")
    with pytest.raises(ValueError, match="finite"):
        hundredths(bad)
    with pytest.raises(ValueError, match="finite"):
        decimal_string(bad, "EUR")
    with pytest.raises(ValueError, match="finite"):
        convert(bad, Decimal(1))


@pytest.mark.parametrize("rate", [Decimal(0), Decimal(-1)])
def test_a_non_positive_exchange_rate_is_refused(rate):
    with pytest.raises(ValueError, match="positive"):
        convert(Decimal(1), rate)


@given(avro_amounts, currencies)
def test_minor_units_equal_exact_integer_half_up_rounding(amount, currency):
    scaled = amount * 10 ** minor_unit_exponent(currency)  # exact: scale 4, 18 digits
    whole, fraction = divmod(abs(scaled), 1)
    magnitude = int(whole) + (1 if fraction >= Decimal("0.5") else 0)
    assert to_minor_units(amount, currency) == (magnitude if scaled >= 0 else -magnitude)


@given(avro_amounts, currencies)
def test_decimal_string_and_minor_units_agree(amount, currency):
    text = decimal_string(amount, currency)
    exponent = minor_unit_exponent(currency)
    pattern = r"-?[0-9]+" + (rf"\.[0-9]{{{exponent}}}" if exponent else "")
    assert re.fullmatch(pattern, text)
    assert int(text.replace(".", "")) == to_minor_units(amount, currency)
    assert Decimal(text) == Decimal(to_minor_units(amount, currency)).scaleb(-exponent)
