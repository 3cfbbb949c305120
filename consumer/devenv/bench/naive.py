"""Run C, the naive consumer every figure is compared to: poll one record, decode it, POST it to
each vendor's sink path one at a time (the sink answering after the vendor latency), commit
synchronously, next record. What a first version without batching or concurrency would do.
At 20 ms per POST it manages about 16 orders/s, so it is time-boxed, and its rate reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from confluent_kafka import Consumer

from consumer.config import PACKAGED_SCHEMA
from consumer.decode import Decoder, load_schema
from consumer.devenv.bench.sink import SinkProcess
from consumer.devenv.bench.stage import CREDENTIALS, Topic, new_group
from consumer.model import Payload
from consumer.transform import custobar, nibble, nudgify


@dataclass(frozen=True)
class NaiveResult:
    orders: int
    orders_per_s: float
    window_s: float
    posts: int


def naive(bootstrap: str, topic: Topic, sink: SinkProcess, *, latency_ms: float,
          seconds: float) -> NaiveResult:  # fmt: skip
    sink.reset(latency_ms)
    schema = load_schema(PACKAGED_SCHEMA)
    decoder = Decoder(reader_schema=schema, writer_schema=schema)
    site_key = CREDENTIALS["NUDGIFY_SITE_KEY"]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": new_group(),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    orders = posts = 0
    with httpx.Client(base_url=sink.url, timeout=10) as client:
        try:
            consumer.subscribe([topic.name])
            message = None
            while message is None or message.error() is not None:
                message = consumer.poll(1.0)
            started = time.perf_counter()
            while time.perf_counter() - started < seconds and orders < topic.records:
                if message is None or message.error() is not None:
                    message = consumer.poll(1.0)
                    continue
                order = decoder.decode_now(message.value())
                bodies = [
                    ("/nibble/v1/sales", nibble.sale(order, report_all_sales=True), "sales"),
                    ("/nudgify/api/purchases", nudgify.purchase(order), "orders"),
                    ("/custobar/api/sales/upload/",
                     custobar.rows(order, default_currency="EUR", company="COMPANY"), "sales"),
                ]  # fmt: skip
                for path, result, entries in bodies:
                    if isinstance(result, Payload):
                        body: dict[str, Any] = {entries: list(result.items)}
                        if path.startswith("/nudgify"):
                            body["site_key"] = site_key
                        client.post(path, json=body).raise_for_status()
                        posts += 1
                consumer.commit(message=message, asynchronous=False)
                orders += 1
                message = consumer.poll(1.0)
            window = time.perf_counter() - started
        finally:
            consumer.close()
    return NaiveResult(orders, orders / window, window, posts)
