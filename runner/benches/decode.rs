//! Decoding alone: the reference query's fields (event time and
//! `event_type`) read from JSON lines, on one thread, in nanoseconds per
//! event. The file is `SLUICE_BENCH_DATA` (as bench/spark/run.sh writes it)
//! or the integration tests' data set of 200,000 events (out of order, a
//! few late and malformed). Run with
//! `cargo bench -p sluice-runner --bench decode`.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::{hint::black_box, time::Instant};

use sluice_runner::decode::{Decoder, FieldValue};

fn main() -> anyhow::Result<()> {
    let data = match std::env::var_os("SLUICE_BENCH_DATA") {
        Some(path) => std::fs::read(path)?,
        None => common::reference_jsonl(&common::data_set(200_000, 42), None).into_bytes(),
    };
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let format = serde_json::from_value(serde_json::json!({"timestampField": "timestamp"}))?;
    let decoder = Decoder::new(&format, ["event_type".to_owned()]);
    let mut values: Vec<FieldValue<'_>> = Vec::new();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let mut sum = 0i64;
        for line in &lines {
            sum = sum.wrapping_add(decoder.decode(black_box(line), &mut values).unwrap_or(0));
        }
        black_box(sum);
        best = best.min(started.elapsed().as_secs_f64() / lines.len() as f64 * 1e9);
    }
    println!(
        "decode: {} events of {:.0} bytes on average, best of 5 passes: {best:.1} ns per event",
        lines.len(),
        data.len() as f64 / lines.len() as f64
    );
    Ok(())
}
