//! o365-connector: collects the Office 365 Management Activity API audit log for one or
//! many Microsoft 365 tenants and forwards every record to the UTMStack engine over gRPC.
//!
//! The library holds every component so that integration tests and benchmarks drive the
//! same code as the binary. Modules are named for the concern they own (see DESIGN.md):
//!
//! - [`admin`]: the operator commands (`subscriptions`, `backfill`, `deadletters`) and
//!   the running service's private admin socket that serves them.
//! - [`api`]: the Management Activity API client of one tenant: origin checks, budget,
//!   error classification.
//! - [`auth`]: access tokens per tenant (client secret or certificate), cached and refreshed.
//! - [`cloud`]: the four Microsoft 365 clouds' endpoints, and a tenant's resolved endpoints.
//! - [`config`]: the TOML configuration with environment overrides, validated at start.
//! - [`check`]: the `check` command: a configuration verified against the API, the
//!   webhook address and the engine, with plain advice.
//! - [`clock`]: the one time source of the whole library (system or controllable).
//! - [`forward`]: the engine forwarder (Log stream, acks, window, reconnect and resend) and
//!   the Log built from each audit record.
//! - [`ops`]: metrics (Prometheus), health, readiness and status.
//! - [`poller`]: the polling fallback: cursors, windows, tail re-scan.
//! - [`proto`]: the UTMStack engine's wire contract (`plugins.Engine`), generated from
//!   `proto/plugins.proto`, and the Unix-socket transport to it.
//! - [`queue`]: the durable content queue (trait, embedded redb backend) and the service's
//!   metadata store.
//! - [`retry`]: the one retry policy (exponential, jittered, capped) and its presets.
//! - [`risk`]: Microsoft Entra ID risk detections through Microsoft Graph, one Log each.
//! - [`secret`]: secrets by env var or file reference, masked in every `Debug` and error.
//! - [`service`]: the running service: wiring, start and graceful stop.
//! - [`server`]: the listeners' edge: TLS (reloaded in place), proxies and the webhook
//!   allowlist, development certificates.
//! - [`subscriptions`]: keeping each tenant's subscriptions started with its webhook
//!   (health checks, spacing, deferred webhooks).
//! - [`tenant`]: a configured tenant at run time (API client, token cache, Log context).
//! - [`demo`]: the whole pipeline on one machine, with a summary of what was lost.
//! - [`emulator`]: in-tree emulators of the UTMStack engine and of Microsoft's API, used by
//!   tests, benchmarks and the demo.
//! - [`utmstack`]: the UTMStack drop-in: its pipeline files, `system_plugins_o365.yaml`
//!   and encrypted secrets turned into a configuration.
//! - [`webhook`]: the subscription webhook: authentication, validation, durable enqueue.
//! - [`worker`]: the workers that fetch content blobs, split them into records and forward
//!   them.
//! - [`cli`]: the command-line interface of the `o365-connector` binary.
//! - [`plugin`]: the binary started as UTMStack's plugin (`com.utmstack.o365.plugin`).
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cloud;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod emulator;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod intake;
pub mod ops;
pub mod plugin;
pub mod poller;
pub mod proto;
pub mod queue;
pub mod retry;
pub mod risk;
pub mod secret;
pub mod server;
pub mod service;
pub mod subscriptions;
pub mod tenant;
pub mod utmstack;
pub mod webhook;
pub mod worker;
