//! Hashes: of the spec fields that shape checkpointed state, windows and
//! dedup ids (a change needs a new checkpoint lineage), and of rendered
//! configuration.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_crds::{
    Aggregation, DEFAULT_KEY_GROUPS, SessionWindow, SlidingWindow, StreamPipelineSpec,
    TumblingWindow,
};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What checkpointed state depends on: the window kind and its sizes, the
/// group key and the aggregations (window state), and each dedup transform's
/// id field and horizon (the ids it remembers and for how long). The
/// watermark, sources, sinks and other transforms can change freely and
/// resume from checkpoints.
#[derive(Serialize)]
struct StateShape<'a> {
    tumbling: Option<&'a TumblingWindow>,
    sliding: Option<&'a SlidingWindow>,
    session: Option<&'a SessionWindow>,
    group_by: &'a [String],
    aggregations: &'a [Aggregation],
    /// Key groups partition window state (`spec.keyGroups`); left out at the
    /// default, so that pipelines from before key groups keep their fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_groups: Option<i32>,
    /// Left out when empty, so that specs without dedup keep the fingerprint
    /// they had before dedup existed (and their pipelines keep running).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dedup: Vec<DedupShape<'a>>,
}

/// A dedup transform's part of the state shape; the horizon in milliseconds,
/// so that `10m` and `600s` are the same.
#[derive(Serialize)]
struct DedupShape<'a> {
    id_field: &'a str,
    horizon_millis: i64,
}

/// The `status.stateFingerprint` of `spec` (16 hex digits).
pub fn state_fingerprint(spec: &StreamPipelineSpec) -> String {
    let dedup: Vec<DedupShape> = spec
        .transforms
        .iter()
        .filter_map(|t| t.dedup.as_ref())
        .map(|d| DedupShape {
            id_field: &d.id_field,
            horizon_millis: d.horizon.as_millis_i64(),
        })
        .collect();
    let shape = match &spec.window {
        Some(w) => Some(StateShape {
            tumbling: w.tumbling.as_ref(),
            sliding: w.sliding.as_ref(),
            session: w.session.as_ref(),
            group_by: &w.group_by,
            aggregations: &w.aggregations,
            key_groups: (spec.key_groups != DEFAULT_KEY_GROUPS).then_some(spec.key_groups),
            dedup,
        }),
        None if dedup.is_empty() => None,
        None => Some(StateShape {
            tumbling: None,
            sliding: None,
            session: None,
            group_by: &[],
            aggregations: &[],
            key_groups: None,
            dedup,
        }),
    };
    // Serialising plain data of owned types cannot fail.
    let json = serde_json::to_vec(&shape).unwrap_or_default();
    sha256_hex(&json)[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(transforms: serde_json::Value, window: bool) -> StreamPipelineSpec {
        let mut spec = serde_json::json!({
            "source": {"generator": {}},
            "transforms": transforms,
            "sinks": [{"name": "out", "stdout": {}}],
            "checkpoint": {"uri": "s3://checkpoints/x"},
        });
        if window {
            spec["window"] = serde_json::json!({
                "tumbling": {"size": "1m"},
                "watermark": "30s",
                "groupBy": ["event_type"],
                "aggregations": [{"name": "n", "count": {}}],
            });
        }
        serde_json::from_value(spec).unwrap()
    }

    fn dedup(id: &str, horizon: &str) -> serde_json::Value {
        serde_json::json!({"dedup": {"idField": id, "horizon": horizon}})
    }

    #[test]
    fn dedup_id_and_horizon_shape_the_state_other_transforms_do_not() {
        let filter = serde_json::json!({"filter": "true"});
        for window in [true, false] {
            let fingerprint = |transforms| state_fingerprint(&spec(transforms, window));
            let without = fingerprint(serde_json::json!([]));
            let with = fingerprint(serde_json::json!([dedup("id", "10m")]));
            assert_ne!(without, with, "adding a dedup (window: {window})");
            assert_ne!(
                with,
                fingerprint(serde_json::json!([dedup("event.id", "10m")]))
            );
            assert_ne!(with, fingerprint(serde_json::json!([dedup("id", "5m")])));
            assert_eq!(with, fingerprint(serde_json::json!([dedup("id", "600s")])));
            assert_eq!(
                with,
                fingerprint(serde_json::json!([filter.clone(), dedup("id", "10m")]))
            );
            assert_eq!(without, fingerprint(serde_json::json!([filter.clone()])));
        }
    }

    #[test]
    fn specs_without_dedup_keep_their_fingerprint() {
        // The fingerprint before dedup was part of it: the window shape alone,
        // or `null` without a window.
        #[derive(Serialize)]
        struct Before<'a> {
            tumbling: Option<&'a TumblingWindow>,
            sliding: Option<&'a SlidingWindow>,
            session: Option<&'a SessionWindow>,
            group_by: &'a [String],
            aggregations: &'a [Aggregation],
        }
        let windowed = spec(serde_json::json!([]), true);
        let w = windowed.window.as_ref().unwrap();
        let before = Before {
            tumbling: w.tumbling.as_ref(),
            sliding: w.sliding.as_ref(),
            session: w.session.as_ref(),
            group_by: &w.group_by,
            aggregations: &w.aggregations,
        };
        assert_eq!(
            state_fingerprint(&windowed),
            sha256_hex(&serde_json::to_vec(&before).unwrap())[..16]
        );
        assert_eq!(
            state_fingerprint(&spec(serde_json::json!([]), false)),
            sha256_hex(b"null")[..16]
        );
    }
}
