//! Stage 5, export: the kernel's exact counts as labelled series (`counts`), Prometheus metrics
//! (`metrics`) served over HTTP (`http`), and events as JSON or human lines (`output`).

pub mod counts;
pub mod http;
pub mod metrics;
pub mod output;
