"""The dead-letter topic writer: original key, value and headers, plus `dlq.*` headers saying
which destination gave up, why (the vendor's own message, scrubbed), after how many attempts,
and where the record came from. `send` returns only once the broker acknowledged the write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.config import Settings
from consumer.errors import DeadLetterError
from consumer.records import DeadLetter, RawRecord


def producer_config(settings: Settings) -> dict[str, Any]:
    passthrough = {k: v for k, v in settings.kafka.items() if not k.startswith(_CONSUMER_ONLY)}
    return {
        **passthrough,
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # Surface an unavailable topic as an error within a bounded time; the pipeline retries.
        "message.timeout.ms": 30_000,
        "logger": logging.getLogger("librdkafka.producer"),
    }


_CONSUMER_ONLY = ("auto.offset.reset", "fetch.", "max.poll", "session.", "heartbeat.",
                  "isolation.", "group.", "enable.partition.eof", "max.partition.",
                  "queued.")  # fmt: skip


class KafkaDeadLetters:
    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def send(self, record: RawRecord, letter: DeadLetter) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acknowledged(error: KafkaError | None, _message: Message) -> None:
            # Runs inside producer.poll(), which the runner calls on the loop's thread.
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(DeadLetterError(f"{error.name()}: {error.str()}"))

        try:
            self._producer.produce(
                self._topic,
                key=record.key,
                value=record.value,
                headers=list[tuple[str, str | bytes | None]](letter.headers(record)),
                on_delivery=acknowledged,
            )
        except (BufferError, KafkaException) as exc:
            raise DeadLetterError(f"cannot enqueue dead letter: {exc}") from exc
        await future

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        return self._producer.flush(timeout_s)
