//! What the scenarios share: the figures they print, the knobs they read, the engine, the
//! connector process, the API emulator and its load, and a drained backlog. The scenarios
//! reuse the integration tests' helpers (`tests/common`) for waiting on a condition, free
//! ports and finding nats-server.
//!
//! Their unit tests are in `../support_tests.rs` (the `scenarios_support` target, run by
//! plain `cargo test`): they check the helpers against the connector itself, e.g. that the
//! configuration the scenarios write is one the connector accepts.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod common;

pub mod api;
pub mod backlog;
pub mod connector;
pub mod engine;
pub mod load;
pub mod nats;

pub use api::*;
pub use backlog::*;
pub use common::{free_port, wait_until};
pub use connector::*;
pub use engine::*;
pub use load::*;
pub use nats::*;

use o365_connector::config::TimestampSource;
use o365_connector::forward::log::LogContext;
use serde_json::json;

/// The Microsoft tenant of the first (or only) tenant.
pub const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
pub const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
pub const SECRET: &str = "bench-secret";
pub const WEBHOOK_SECRET: &str = "bench-webhook-secret";
pub const UTM_TENANT: &str = "ce66672c-e36d-4761-a8c8-90058fee1a24";
/// The first tenant's name (its UTMStack group).
pub const GROUP: &str = "bench";
/// Bytes in a MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// One figure, printed as one JSON line.
pub fn figure(
    scenario: &str,
    metric: &str,
    value: f64,
    unit: &str,
    limit: Option<f64>,
    target: Option<(f64, &str)>,
) {
    println!(
        "{}",
        figure_line(scenario, metric, value, unit, limit, target)
    );
}

/// The JSON line of [`figure`]: `target`/`op` (`"ge"`, else at most) apply to `ratio`
/// (`value / limit`) when there is a limit, to `value` otherwise.
pub fn figure_line(
    scenario: &str,
    metric: &str,
    value: f64,
    unit: &str,
    limit: Option<f64>,
    target: Option<(f64, &str)>,
) -> serde_json::Value {
    let ratio = limit.map(|limit| value / limit);
    let checked = ratio.unwrap_or(value);
    let met = target.map(|(target, op)| match op {
        "ge" => checked >= target,
        _ => checked <= target,
    });
    json!({"scenario": scenario, "metric": metric, "value": value, "unit": unit,
           "limit": limit, "ratio": ratio, "target": target.map(|t| t.0),
           "op": target.map(|t| t.1), "met": met})
}

/// The number in the environment variable `name`, else `default` (the scenarios' knobs).
pub fn env_number(name: &str, default: usize) -> usize {
    common::env_number(name, default as u64) as usize
}

pub fn log_context() -> LogContext {
    LogContext {
        utm_tenant_id: UTM_TENANT.into(),
        group_name: GROUP.into(),
        timestamp: TimestampSource::Event,
    }
}

/// Process CPU seconds over `records` (or items), in microseconds per record.
pub fn cpu_micros_per_record(cpu_seconds: f64, records: u64) -> f64 {
    cpu_seconds * 1e6 / records as f64
}
