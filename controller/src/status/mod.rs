//! The StreamPipeline status: reading runners, aggregating, conditions.

pub mod aggregate;
pub mod conditions;
pub mod pods;
pub mod runner;
