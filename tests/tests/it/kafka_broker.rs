//! The tansu test broker itself (`sluice_tests::kafka`): what the Kafka tests
//! rely on, checked against the real process.

use std::time::Duration;

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
};
use sluice_tests::kafka::KafkaBroker;

const TOPIC: &str = "kept";
const PER_PARTITION: usize = 20_000;

#[test]
fn a_killed_broker_comes_back_with_its_records_and_group_offsets() {
    let mut broker = KafkaBroker::start().unwrap();
    broker.create_topic(TOPIC, 2).unwrap();
    let producer = broker.producer().unwrap();
    for i in 0..PER_PARTITION {
        for partition in 0..2 {
            let payload = format!("{partition}:{i}");
            producer
                .send(TOPIC, partition, None, payload.as_bytes())
                .unwrap();
        }
    }
    producer.flush().unwrap();
    let end = vec![PER_PARTITION as i64; 2];
    assert_eq!(broker.end_offsets(TOPIC).unwrap(), end);
    let committer = group_consumer(&broker, "keeper");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(TOPIC, 0, Offset::Offset(1_234))
        .unwrap();
    offsets
        .add_partition_offset(TOPIC, 1, Offset::Offset(PER_PARTITION as i64))
        .unwrap();
    committer.commit(&offsets, CommitMode::Sync).unwrap();
    drop(committer);

    broker.restart().unwrap();

    assert_eq!(broker.end_offsets(TOPIC).unwrap(), end);
    assert_eq!(
        broker.committed_offsets("keeper", TOPIC).unwrap(),
        vec![Some(1_234), Some(PER_PARTITION as i64)]
    );
    // Every record reads back, in order, with its payload.
    let reader = group_consumer(&broker, "reader");
    let mut from_start = TopicPartitionList::new();
    for partition in 0..2 {
        from_start
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&from_start).unwrap();
    let mut next = [0usize; 2];
    while next.iter().sum::<usize>() < 2 * PER_PARTITION {
        let message = next_message(&reader);
        let partition = message.partition() as usize;
        assert_eq!(message.offset(), next[partition] as i64);
        assert_eq!(
            message.payload(),
            Some(format!("{partition}:{}", next[partition]).as_bytes())
        );
        next[partition] += 1;
    }
}

/// Two outages of one broker (`cut_off`, `restore`): while cut off, the
/// broker's port refuses connections; afterwards it has every record and
/// committed offset, and a producer and a consumer made before the first
/// outage go on with their work.
#[test]
fn outages_refuse_clients_and_the_broker_comes_back_with_everything() {
    const CUT: &str = "cut";
    const PER_ROUND: usize = 1_000;
    let mut broker = KafkaBroker::start().unwrap();
    broker.create_topic(CUT, 2).unwrap();
    let producer = broker.producer().unwrap();
    let reader = group_consumer(&broker, "through-outages");
    let mut from_start = TopicPartitionList::new();
    for partition in 0..2 {
        from_start
            .add_partition_offset(CUT, partition, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&from_start).unwrap();
    let mut read: Vec<usize> = Vec::new();
    let mut produced = 0;
    for round in 0..3 {
        if round > 0 {
            broker.cut_off();
            assert!(
                std::net::TcpStream::connect(broker.bootstrap_servers()).is_err(),
                "outage {round}: the broker's port still accepts connections"
            );
            let probe: BaseConsumer = broker.client_config().create().unwrap();
            assert!(
                probe.fetch_metadata(None, Duration::from_secs(1)).is_err(),
                "outage {round}: metadata answered"
            );
            broker.restore().unwrap();
            assert_eq!(
                broker.end_offsets(CUT).unwrap(),
                vec![(produced / 2) as i64; 2]
            );
            assert_eq!(
                broker.committed_offsets("through-outages", CUT).unwrap(),
                vec![Some((produced / 2) as i64); 2]
            );
        }
        for i in produced..produced + PER_ROUND {
            producer
                .send(CUT, (i % 2) as i32, None, i.to_string().as_bytes())
                .unwrap();
        }
        producer.flush().unwrap();
        produced += PER_ROUND;
        assert_eq!(
            broker.end_offsets(CUT).unwrap(),
            vec![(produced / 2) as i64; 2]
        );
        while read.len() < produced {
            let message = next_message(&reader);
            let payload = std::str::from_utf8(message.payload().unwrap()).unwrap();
            read.push(payload.parse().unwrap());
        }
        reader.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    read.sort_unstable();
    assert_eq!(
        read,
        (0..produced).collect::<Vec<_>>(),
        "every record read once"
    );
}

/// The next record, riding out transient errors (a consumer that lived
/// through an outage reports "all brokers down" once); fails after 30 s
/// without a record.
fn next_message(reader: &BaseConsumer) -> rdkafka::message::BorrowedMessage<'_> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!remaining.is_zero(), "the broker stopped serving records");
        if let Some(Ok(message)) = reader.poll(remaining) {
            return message;
        }
    }
}

fn group_consumer(broker: &KafkaBroker, group: &str) -> BaseConsumer {
    broker
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap()
}
