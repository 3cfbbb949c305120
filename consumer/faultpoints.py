"""Test-only crash points, for proving the guarantees at each boundary of the flow.

`ORDER_CONSUMER_CRASH_AT=<point>` makes the process die on the spot (`os._exit`, no cleanup,
like SIGKILL) the first time it reaches that point. The variable is outside the `CONSUMER_`
namespace on purpose: it is not a setting, and production never sets it.

    after_vendor_accepted   the vendor answered 2xx; the ledger does not know yet
    after_ledger_write      the ledger says delivered; the offset is not committed yet
    after_dead_letter       the dead letter is acknowledged and recorded; offset not committed

`ORDER_CONSUMER_FAIL_ORDERS=<n1>,<n2>` makes handling those order numbers raise, as a bug in
our own code would: the fault suite proves such a record still gets an outcome.
"""

from __future__ import annotations

import os
import sys

POINTS = frozenset({"after_vendor_accepted", "after_ledger_write", "after_dead_letter"})
CRASH_EXIT_CODE = 70
_armed = os.environ.get("ORDER_CONSUMER_CRASH_AT", "")
if _armed and _armed not in POINTS:
    raise SystemExit(f"ORDER_CONSUMER_CRASH_AT must be one of {', '.join(sorted(POINTS))}")


_failing = frozenset(filter(None, os.environ.get("ORDER_CONSUMER_FAIL_ORDERS", "").split(",")))


class InjectedBug(RuntimeError):
    """Raised for the orders ORDER_CONSUMER_FAIL_ORDERS names."""


def fail_for(order_number: str) -> None:
    if order_number in _failing:
        raise InjectedBug(f"injected bug while handling order {order_number}")


def reached(point: str) -> None:
    if point == _armed:
        sys.stderr.write(f"crash point {point} reached: exiting\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
