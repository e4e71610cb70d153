//! The Sluice stream engine: sources → decode → transforms → event-time
//! windows → sinks, in micro-batch epochs with write-ahead plans and
//! checkpoints in object storage, so that a crash loses nothing and
//! duplicates nothing. See `pipeline` for the loop and the trait seams in
//! `source`, `sink`, `checkpoint` and `dead_letter`.

pub mod checkpoint;
pub mod dead_letter;
pub mod decode;
pub mod http;
pub mod kafka;
pub mod memory;
pub mod pipeline;
pub mod secrets;
pub mod server;
pub mod shuffle;
pub mod sink;
pub mod source;
pub mod storage;
pub mod telemetry;
pub mod transform;
pub mod window;
