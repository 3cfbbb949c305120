"""Money at the vendor boundary: Decimal in, integer hundredths or decimal strings out.

Place in the flow: used by the transforms (decode → **transform** → deliver); pure, no I/O.

Choices:
- `hundredths` (Custobar's "money in cents") is the amount times 100 for EVERY currency, whatever
  its ISO 4217 exponent: ¥1500 → 150000, 1.2345 KWD → 123. Custobar's conversion
  `unit_price_in_currency / sale_exchange_rate = the price in the default currency` holds for
  every currency pair only if both sides count hundredths of their unit, and the official
  plugins send exactly `round(x * 100)`.
- `decimal_string` and `to_minor_units` follow ISO 4217 minor units: 0 decimals for JPY, KRW,
  VND, CLP, ISK, UGX, XAF, XOF, XPF, KMF, GNF, PYG, RWF, VUV, DJF, BIF; 3 for BHD, KWD, OMR,
  JOD, IQD, LYD, TND; 2 for everything else (Nibble's decimal strings: "10.50", JPY "1500").
- Rounding is ROUND_HALF_UP (halves away from zero), as the vendors' official PHP plugins do with
  `round(x*100)`. Python's `round()` rounds halves to even and is never used; nor is float.
- Arithmetic runs in a private decimal context (60 significant digits), so a caller's thread
  context can neither change a result nor lose precision in a conversion before its one rounding.
- Decimal strings never use exponent notation and never show a negative zero.
- Every function rejects NaN and infinities with ValueError: they are not amounts.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import (
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from types import MappingProxyType

DEFAULT_EXPONENT = 2

_ZERO_DECIMALS = ("JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "XPF", "KMF", "GNF",
                  "PYG", "RWF", "VUV", "DJF", "BIF")  # fmt: skip
_THREE_DECIMALS = ("BHD", "KWD", "OMR", "JOD", "IQD", "LYD", "TND")

MINOR_UNIT_EXPONENTS: Mapping[str, int] = MappingProxyType(
    dict.fromkeys(_ZERO_DECIMALS, 0) | dict.fromkeys(_THREE_DECIMALS, 3)
)
"""ISO 4217 currencies whose minor unit is not 1/100 (every other code has 2 decimals)."""

# Wide enough that no amount in the Avro schema (18 digits) or quotient of one by a rate
# (20 digits) is rounded before the single ROUND_HALF_UP step.
_CONTEXT = Context(
    prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow]
)


_ONE = Decimal(1)


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit: 2 unless ISO 4217 says otherwise."""
    return MINOR_UNIT_EXPONENTS.get(currency.strip().upper(), DEFAULT_EXPONENT)


def hundredths(amount: Decimal) -> int:
    """`amount` times 100 as an integer, halves away from zero, in any currency (Custobar)."""
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    return int(amount.scaleb(2, _CONTEXT).quantize(_ONE, ROUND_HALF_UP, _CONTEXT))


def to_minor_units(amount: Decimal, currency: str) -> int:
    """`amount` in the currency's ISO 4217 minor units (cents, yen for JPY, fils for KWD),
    halves away from zero. Not Custobar's money: that is `hundredths` in every currency."""
    return _scaled_integer(amount, minor_unit_exponent(currency))


def _scaled_integer(amount: Decimal, exponent: int) -> int:
    _check_finite(amount)
    return int(amount.scaleb(exponent, _CONTEXT).quantize(_ONE, ROUND_HALF_UP, _CONTEXT))


def decimal_string(amount: Decimal, currency: str) -> str:
    """`amount` as a plain decimal string in the currency's precision: "10.50", JPY "1500"."""
    _check_finite(amount)
    step = Decimal(1).scaleb(-minor_unit_exponent(currency))
    rounded = amount.quantize(step, rounding=ROUND_HALF_UP, context=_CONTEXT)
    if rounded.is_zero():
        rounded = rounded.copy_abs()  # "-0.00" would read as a refund
    return format(rounded, "f")


def convert(amount: Decimal, exchange_rate: Decimal) -> Decimal:
    """Price in the base currency: `amount / exchange_rate`, unrounded (round once, later)."""
    if not (amount.is_finite() and exchange_rate.is_finite()):
        raise ValueError(f"not a finite amount: {amount} / {exchange_rate}")
    if exchange_rate <= 0:
        raise ValueError(f"exchange rate must be positive, got {exchange_rate}")
    return _CONTEXT.divide(amount, exchange_rate)


def _check_finite(value: Decimal) -> None:
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {value}")
