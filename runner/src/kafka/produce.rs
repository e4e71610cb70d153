//! Producing with librdkafka's bounded local queue: a full queue waits for
//! the oldest pending delivery instead of failing the epoch.

use std::{future::Future, time::Duration};

use rdkafka::{
    error::{KafkaError as RdKafkaError, RDKafkaErrorCode},
    message::ToBytes,
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
};

/// Queues `record`, adding its delivery to `pending`; when the local queue
/// is full, first waits for deliveries already pending.
pub async fn send_queued<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
    pending: &mut Vec<DeliveryFuture>,
) -> Result<(), RdKafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => {
                pending.push(delivery);
                return Ok(());
            }
            Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                match pending.pop() {
                    Some(delivery) => delivered(delivery.await)?,
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The outcome of one delivery.
pub fn delivered(delivery: <DeliveryFuture as Future>::Output) -> Result<(), RdKafkaError> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        // The producer dropped the delivery report (it is closing).
        Err(_) => Err(RdKafkaError::Canceled),
    }
}
