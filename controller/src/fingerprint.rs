//! Hashes: of the spec fields that shape checkpointed window state (a change
//! needs a new checkpoint lineage), and of rendered configuration.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_crds::{Aggregation, SessionWindow, SlidingWindow, StreamPipelineSpec, TumblingWindow};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the saved window state depends on: the window kind and its sizes,
/// the group key and the aggregations. The watermark, sources, sinks and
/// transforms can change freely and resume from checkpoints.
#[derive(Serialize)]
struct StateShape<'a> {
    tumbling: Option<&'a TumblingWindow>,
    sliding: Option<&'a SlidingWindow>,
    session: Option<&'a SessionWindow>,
    group_by: &'a [String],
    aggregations: &'a [Aggregation],
}

/// The `status.stateFingerprint` of `spec` (16 hex digits).
pub fn state_fingerprint(spec: &StreamPipelineSpec) -> String {
    let shape = spec.window.as_ref().map(|w| StateShape {
        tumbling: w.tumbling.as_ref(),
        sliding: w.sliding.as_ref(),
        session: w.session.as_ref(),
        group_by: &w.group_by,
        aggregations: &w.aggregations,
    });
    // Serialising plain data of owned types cannot fail.
    let json = serde_json::to_vec(&shape).unwrap_or_default();
    sha256_hex(&json)[..16].to_owned()
}
