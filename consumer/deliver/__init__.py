"""Delivery: the only httpx users. One client per vendor (status → error class), a worker per
destination that batches, claims in the ledger, sends, retries and isolates rejected orders."""
