"""The vendor sandbox: Nibble, Nudgify and Custobar stand-ins plus a schema registry, on one
loopback port, validating requests as the vendors' docs say. A separate entry point: the
pipeline never imports it.

    /nibble/v1/sales  /nibble/v1/session  /nibble/v1/session/{nibbleId}
    /nudgify/api/purchases
    /custobar/api/sales/upload/
    /registry/subjects/{subject}/versions  /registry/schemas/ids/{id}
    /_sandbox/...   inspection and fault injection (see `control.py`)
"""
