//! The unit tests of the scenarios' helpers (`support/`), run by `cargo test` (this target
//! has `test = true`) and `cargo test --bench scenarios_support`: the figures' verdicts, the
//! latency percentiles, and that the configuration files the scenarios write are ones the
//! connector accepts, so the scenarios cannot rot unnoticed between two benchmark runs.

// The tests use a part of what the scenarios re-export from `support`.
#[path = "support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod figures {

    use crate::support::figure_line;

    #[test]
    fn figure_with_a_limit_checks_its_target_against_the_ratio() {
        let line = figure_line(
            "drain",
            "records_per_s",
            80.0,
            "records/s",
            Some(100.0),
            Some((0.75, "ge")),
        );
        assert_eq!(line["ratio"], 0.8);
        assert_eq!(line["met"], true);
        let line = figure_line(
            "drain",
            "records_per_s",
            70.0,
            "records/s",
            Some(100.0),
            Some((0.75, "ge")),
        );
        assert_eq!(line["met"], false);
    }

    #[test]
    fn figure_without_a_limit_checks_its_target_against_the_value() {
        let line = figure_line("latency", "p99_ms", 900.0, "ms", None, Some((1000.0, "le")));
        assert!(line["ratio"].is_null());
        assert_eq!(line["met"], true);
        let line = figure_line(
            "latency",
            "p99_ms",
            1100.0,
            "ms",
            None,
            Some((1000.0, "le")),
        );
        assert_eq!(line["met"], false);
        assert!(figure_line("latency", "p50_ms", 1.0, "ms", None, None)["met"].is_null());
    }
}

mod latencies {

    use std::time::Duration;

    use crate::support::percentile_ms;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let mut latencies: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut latencies, 0.5), 50.0);
        assert_eq!(percentile_ms(&mut latencies, 0.99), 99.0);
        assert_eq!(percentile_ms(&mut latencies, 1.0), 100.0);
    }
}

mod connector_config {

    use o365_connector::config::{Config, StoreBackendKind};

    use crate::support::*;

    fn load(setup: &ConnectorSetup<'_>) -> Config {
        let path = write_config(setup, 8443);
        let env = [
            ("BENCH_SECRET".to_string(), SECRET.to_string()),
            (
                "BENCH_WEBHOOK_SECRET".to_string(),
                WEBHOOK_SECRET.to_string(),
            ),
        ];
        Config::load_with_env(&path, env).unwrap_or_else(|error| {
            panic!(
                "the connector refuses the scenarios' configuration: {error}\n{}",
                std::fs::read_to_string(&path).unwrap()
            )
        })
    }

    #[test]
    fn the_connector_accepts_the_webhook_and_nats_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = [
            TENANT.to_string(),
            "0f0e0d0c-0000-4000-8000-000000000001".to_string(),
        ];
        let nats = "[store.nats]\nurls = [\"nats://127.0.0.1:4222\"]\nprefix = \"bench\"\nreplica_id = \"r0\"\n";
        let config = load(&ConnectorSetup {
            dir: dir.path(),
            socket: &dir.path().join("engine.sock"),
            api_base: "http://127.0.0.1:9",
            requests_per_minute: 1_000_000,
            tenants: &tenants,
            webhook: true,
            poller: IDLE_POLLER,
            store: ("backend = \"nats\"", nats),
        });
        assert_eq!(config.tenants.len(), 2);
        assert_eq!(config.tenants[0].name, GROUP);
        assert_eq!(config.store.backend, StoreBackendKind::Nats);
        assert_eq!(config.workers.count.get(), bench_workers());
    }

    #[test]
    fn the_connector_accepts_the_poll_only_embedded_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(&ConnectorSetup {
            dir: dir.path(),
            socket: &dir.path().join("engine.sock"),
            api_base: "http://127.0.0.1:9",
            requests_per_minute: 2000,
            tenants: &[TENANT.to_string()],
            webhook: false,
            poller: &eager_poller(1),
            store: ("", ""),
        });
        assert_eq!(config.store.backend, StoreBackendKind::Embedded);
        assert_eq!(config.store.path, dir.path().join("store"));
    }
}
