"""Realistic sample OrderCompleted events for the demo, the tests and the benchmark.

Deterministic for a seed: the same call makes the same orders (same order numbers), which is
what lets a second demo run show that nothing is delivered twice.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import fastavro
import httpx
from confluent_kafka import Producer

from consumer.config import PACKAGED_SCHEMA

FIRST_NAMES = ("Aino", "Leon", "Maya", "Omar", "Sofia", "Kenji", "Grace", "Mateo", "Ines", "Noah")
LAST_NAMES = ("Virtanen", "Gomes", "Smith", "Haddad", "Rossi", "Tanaka", "Okafor", "Silva")
CITIES = (("Helsinki", "Uusimaa", "FI"), ("London", "England", "GB"), ("Austin", "Texas", "US"),
          ("Osaka", "Osaka", "JP"), ("Berlin", "Berlin", "DE"), ("Lyon", None, "FR"))  # fmt: skip
PRODUCTS = (("786", "LCD Display (Upgrade)", "49.90"), ("777", "Throttle", "19.50"),
            ("1201", "Trail Helmet", "129.00"), ("1302", "Rain Jacket", "89.95"),
            ("1403", "Bottle Cage", "9.99"), ("1504", "Saddle Bag", "34.00"))  # fmt: skip
CURRENCIES = (("EUR", None, 0.55), ("GBP", "0.8650000000", 0.2), ("USD", "1.0800000000", 0.15),
              ("JPY", "162.5000000000", 0.1))  # fmt: skip
STATES = (("COMPLETE", 0.9), ("CANCELLED", 0.05), ("RETURNED", 0.05))


def load_schema(path: Path = PACKAGED_SCHEMA) -> Any:
    return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


def schemas_with_references(path: Path = PACKAGED_SCHEMA) -> dict[str, dict[str, Any]]:
    """The order schema as a platform team splits it into subjects: `Address`, `Customer`
    (with an optional billing `Address`: a reference of a reference) and the order naming
    both by their full names. Records of `sample_orders` fit it (billing defaults to null)."""
    order = json.loads(path.read_text(encoding="utf-8"))
    namespace = order["namespace"]
    fields = {f["name"]: f for f in order["fields"]}
    address = {**fields["address"]["type"][1], "namespace": namespace}
    customer = {**fields["customer"]["type"], "namespace": namespace}
    customer["fields"] = [*customer["fields"], {"name": "billing", "default": None,
                          "type": ["null", f"{namespace}.Address"]}]  # fmt: skip
    fields["customer"]["type"] = f"{namespace}.Customer"
    fields["address"]["type"] = ["null", f"{namespace}.Address"]
    return {"order": order, "customer": customer, "address": address}


def _money(value: Decimal, currency: str) -> Decimal:
    exponent = Decimal(1) if currency == "JPY" else Decimal("0.01")
    return value.quantize(exponent, rounding=ROUND_HALF_UP)


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


def sample_order(index: int, rng: random.Random, *, prefix: str = "SO") -> dict[str, Any]:
    """One OrderCompleted record (an Avro-ready dict) with consistent money."""
    currency, rate, _ = _pick(rng, CURRENCIES)
    factor = Decimal(rate) if rate else Decimal(1)
    negotiated = rng.random() < 0.3
    lines: list[dict[str, Any]] = []
    for n in range(rng.randint(1, 4)):
        product_id, name, price = rng.choice(PRODUCTS)
        unit = _money(Decimal(price) * factor, currency)
        quantity = rng.randint(1, 3)
        discount = _money(unit * quantity * Decimal(rng.choice((0, 0, 0, 5, 10))) / 100, currency)
        lines.append({
            "product_id": product_id, "variant_id": f"{product_id}-{rng.choice('SML')}",
            "sku": f"SKU-{product_id}", "name": name, "variant_name": rng.choice(("S", "M", "L")),
            "url": f"https://shop.example/p/{product_id}",
            "image_url": f"https://shop.example/img/{product_id}.png",
            "quantity": quantity, "unit_price": unit, "discount": discount,
            "total": unit * quantity - discount,
            "nibble_id": f"NB{index:06d}{n}" if negotiated and n == 0 else None,
            "is_nibble_addon": False,
        })  # fmt: skip
    if negotiated and rng.random() < 0.3:
        lines.append({**lines[0], "product_id": "GIFT-1", "variant_id": None, "sku": "SKU-GIFT",
                      "name": "Gift bottle", "unit_price": Decimal(0), "discount": Decimal(0),
                      "total": Decimal(0), "quantity": 1, "is_nibble_addon": True})  # fmt: skip
    order_discount = _money(sum(line["total"] for line in lines) * Decimal("0.05"), currency) \
        if rng.random() < 0.2 else Decimal(0)  # fmt: skip
    shipping = _money(Decimal("4.90") * factor, currency) if rng.random() < 0.6 else Decimal(0)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    city, region, country = rng.choice(CITIES)
    has_email = rng.random() < 0.95
    return {
        "order_number": f"{prefix}-{100000 + index}",
        # Platform ids as unique across prefixes as the order numbers are.
        "order_id": _id_base(prefix) + index if rng.random() < 0.8 else None,
        "completed_at": datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=7 * index),
        "currency": currency,
        "exchange_rate": Decimal(rate) if rate else None,
        "customer": {
            "id": f"C{rng.randint(1000, 9999)}" if rng.random() < 0.7 else None,
            "email": f"{first.lower()}.{last.lower()}{index}@example.com" if has_email else None,
            "phone": f"+35840{rng.randint(1000000, 9999999)}" if rng.random() < 0.5 else None,
            "first_name": first, "last_name": last,
            "ip": f"92.21.{rng.randint(0, 255)}.{rng.randint(1, 254)}, 10.0.0.1",
        },
        "address": {"city": city, "state": region, "country": country},
        "lines": lines,
        "discount": order_discount,
        "shipping": shipping,
        "total": sum(line["total"] for line in lines) - order_discount + shipping,
        "state": _pick(rng, STATES)[0],
        "coupon_codes": ["WINTER5"] if order_discount else [],
        "shop_id": rng.choice(("web", "app")),
        "payment_method": rng.choice(("card", "paypal", "invoice")),
        "shipping_method": rng.choice(("post", "courier", "pickup")),
        "nibble_session_token": (
            f"sess-{rng.getrandbits(48):012x}" if negotiated or rng.random() < 0.85 else None
        ),
        "cart_nibble_id": f"NBC{index:06d}" if negotiated and rng.random() < 0.3 else None,
        "tags": ["demo"],
        "custom_fields": {"channel": rng.choice(("organic", "ads"))},
    }  # fmt: skip


def _id_base(prefix: str) -> int:
    return 500_000 + (zlib.crc32(prefix.encode()) % 100_000) * 1_000_000


def sample_orders(
    count: int, *, seed: int = 7, prefix: str = "SO", start: int = 0
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [sample_order(start + i, rng, prefix=prefix) for i in range(count)]


def encode_schemaless(record: dict[str, Any], schema: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def encode_confluent(record: dict[str, Any], schema: Any, schema_id: int) -> bytes:
    return struct.pack(">bI", 0, schema_id) + encode_schemaless(record, schema)


def register_schema(registry_url: str, subject: str, schema: Path | str = PACKAGED_SCHEMA) -> int:
    text = schema.read_text(encoding="utf-8") if isinstance(schema, Path) else schema
    response = httpx.post(f"{registry_url.rstrip('/')}/subjects/{subject}/versions",
                          json={"schema": text}, timeout=10)  # fmt: skip
    response.raise_for_status()
    return int(response.json()["id"])


def partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (`consistent_random`: CRC-32 of the key)
    gives a keyed record, so tests can place records explicitly and still agree with it."""
    return zlib.crc32(key) % partitions


def produce_messages(
    bootstrap: str, topic: str, messages: Iterable[tuple[int, bytes | None, bytes]]
) -> int:
    """Produce (partition, key, value) messages in order; per partition they keep that order
    (idempotent producer), so a fresh topic's offsets are each partition's positions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                         "enable.idempotence": True})  # fmt: skip
    count = 0
    for partition, key, value in messages:
        producer.produce(topic, key=key, value=value, partition=partition)
        count += 1
        if count % 5000 == 0:
            producer.flush()
    if producer.flush(30) != 0:
        raise RuntimeError("not every message was acknowledged by the broker")
    return count


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[dict[str, Any]],
    *,
    encode: Callable[[dict[str, Any]], bytes],
    extra: Iterable[tuple[bytes | None, bytes]] = (),
) -> int:
    """Produce records keyed by order number (one order's events share a partition)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                         "enable.idempotence": True})  # fmt: skip
    count = 0
    for record in records:
        producer.produce(topic, key=record["order_number"].encode(), value=encode(record))
        count += 1
        if count % 5000 == 0:
            producer.flush()
    for key, value in extra:
        producer.produce(topic, key=key, value=value)
        count += 1
    if producer.flush(30) != 0:
        raise RuntimeError("not every sample order was acknowledged by the broker")
    return count
