"""Transform stage: `Order` → one vendor's payload items, or a typed `Skip`/`Invalid`.

Place in the flow: decode → **transform** → ledger check → batch → send. Everything here is pure:
no clock, no logger, no settings lookup, no I/O; what a transform needs is passed in. Each vendor
module carries that vendor's whole contract and documents every mapping choice in its docstring:

- `money`    hundredths (Custobar, every currency), ISO 4217 decimal strings (Nibble),
             ROUND_HALF_UP, currency conversion.
- `nibble`   report-sale objects (`POST /v1/sales`).
- `nudgify`  purchase orders (`POST /api/purchases`).
- `custobar` sale rows (`POST /api/sales/upload/`), one per line item.

The imports run one way: these modules import `consumer.model` and each other, nothing else
from the package.
"""
