//! `sluice-controller`: reconciles StreamPipelines into runner StatefulSets and
//! reports their lag and health.

pub mod permissions;
