"""The project's own broker: a real Kafka that tests, demo and benchmark share."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.devenv.kafka import LocalKafka, create_topic

pytestmark = pytest.mark.integration


def test_a_restarted_broker_keeps_topics_records_and_committed_offsets() -> None:
    with LocalKafka() as broker:
        topic, group = f"t-{uuid.uuid4().hex[:8]}", "g"
        create_topic(broker.bootstrap_servers, topic, partitions=3)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
        for n in range(10):
            producer.produce(topic, key=str(n).encode(), value=b"v%d" % n)
        assert producer.flush(10) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap_servers,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        seen = []
        while len(seen) < 10:
            message = consumer.poll(5)
            assert message is not None, "records not delivered by the local broker"
            seen.append(message.value())
        consumer.commit(asynchronous=False)
        consumer.close()
        port = broker.port

        broker.restart()

        assert broker.port == port
        probe = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": group})
        committed = probe.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        probe.close()
        assert sum(tp.offset for tp in committed) == 10
