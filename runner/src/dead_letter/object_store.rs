//! Dead events as JSON lines, one object per replica and epoch:
//! `replica-<r>/<epoch>.jsonl`. Each line holds the reason, the source
//! partition and offset, and the original bytes (as a string when they are
//! UTF-8, else base64-free hex in `payloadHex`).

use std::{fmt::Write as _, sync::Arc};

use async_trait::async_trait;
use object_store::{ObjectStore, PutMode, PutOptions, path::Path};
use serde::Serialize;

use super::{DeadEvent, DeadLetter, DeadLetterError, Reason};
use crate::sink::EpochKey;

pub struct ObjectStoreDeadLetter {
    store: Arc<dyn ObjectStore>,
    uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    #[serde(flatten)]
    reason: &'a Reason,
    stream: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

impl ObjectStoreDeadLetter {
    pub fn open(uri: &str) -> Result<Self, DeadLetterError> {
        Ok(Self {
            store: crate::storage::store_for(uri)?,
            uri: uri.to_owned(),
        })
    }
}

fn to_line(event: &DeadEvent) -> Vec<u8> {
    let text = std::str::from_utf8(&event.payload).ok();
    let payload_hex = text.is_none().then(|| {
        event.payload.iter().fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
    });
    let line = Line {
        reason: &event.reason,
        stream: &event.partition.stream,
        partition: event.partition.partition,
        offset: event.offset,
        payload: text,
        payload_hex,
    };
    // Serialising plain strings and numbers cannot fail.
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[async_trait]
impl DeadLetter for ObjectStoreDeadLetter {
    async fn write_epoch(
        &mut self,
        key: &EpochKey,
        events: &[DeadEvent],
    ) -> Result<(), DeadLetterError> {
        let object = Path::from(format!("{}/{:020}.jsonl", key.lane.folder(), key.epoch));
        let body: Vec<u8> = events.iter().flat_map(to_line).collect();
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.store.put_opts(&object, body.into(), options).await {
            // A replayed epoch's dead events are identical to those already written.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(error) => Err(DeadLetterError::Store {
                uri: self.uri.clone(),
                error,
            }),
        }
    }
}
