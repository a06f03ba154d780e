#!/usr/bin/env python3
"""The straightforward copy script an engineer writes under pressure (a peer for kmirror's
benchmark): assign every partition of SRC_TOPIC from the beginning, produce each record to
the same partition of DST_TOPIC with its key, value, headers and timestamp, stop when every
partition reports end-of-partition, flush. No checkpoints, no retries beyond librdkafka's.

usage: peer_copy.py SRC_BOOTSTRAP SRC_TOPIC DST_BOOTSTRAP DST_TOPIC
"""
import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition


def main():
    src, src_topic, dst, dst_topic = sys.argv[1:5]
    consumer = Consumer({
        "bootstrap.servers": src,
        "group.id": "peer-copy",  # required by the client; never joined (assign only)
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    producer = Producer({"bootstrap.servers": dst, "linger.ms": 5})
    md = consumer.list_topics(src_topic, timeout=10)
    partitions = sorted(md.topics[src_topic].partitions)
    consumer.assign([TopicPartition(src_topic, p, OFFSET_BEGINNING) for p in partitions])
    remaining = set(partitions)
    copied = 0
    while remaining:
        for m in consumer.consume(num_messages=1000, timeout=1.0):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(m.partition())
                    continue
                raise SystemExit(f"consume error: {err}")
            while True:
                try:
                    producer.produce(dst_topic, m.value(), m.key(), partition=m.partition(),
                                     headers=m.headers(), timestamp=m.timestamp()[1])
                    break
                except BufferError:
                    producer.poll(0.05)
            copied += 1
        producer.poll(0)
    left = producer.flush(60)
    consumer.close()
    if left:
        raise SystemExit(f"{left} records not delivered")
    print(copied)


if __name__ == "__main__":
    main()
