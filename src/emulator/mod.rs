//! In-tree emulators of the two services the connector talks to. Tests, benchmarks and
//! the demo run against them; they are faithful to the published contracts (see
//! `../shared/spec/`), not to our client, and they record what they received so tests can
//! prove that nothing was lost.
//!
//! - [`engine`]: the UTMStack engine's `plugins.Engine` gRPC service on a Unix socket.
//! - [`api`]: Microsoft's Management Activity API and its login endpoints.

pub mod api;
pub mod engine;
