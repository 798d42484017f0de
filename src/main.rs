//! The `o365-connector` binary: parses the command line, sets up logging on stderr, turns
//! SIGINT and SIGTERM into one cancellation token and SIGHUP into TLS reload requests, and
//! runs the command. Started as `com.utmstack.o365.plugin` (the executable's file name), it
//! is UTMStack's plugin instead and reads no command line (see `o365_connector::plugin`).

use std::io::IsTerminal;

use clap::Parser;
use o365_connector::cli::{self, Cli};
use o365_connector::plugin;
use o365_connector::server::tls_reload::{ReloadTrigger, reload_channel};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let as_plugin = plugin::invoked_as_plugin(std::env::args_os().next().as_deref());
    // The plugin ignores its arguments, as UTMStack's Go plugin does.
    let cli = if as_plugin { None } else { Some(Cli::parse()) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mode = std::env::var(plugin::ENV_MODE).ok();
    if as_plugin && !plugin::collects_in_mode(mode.as_deref()) {
        tracing::debug!(?mode, "the plugin collects only with MODE=worker; exiting");
        return std::process::ExitCode::SUCCESS;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let (reload_trigger, reload_requests) = reload_channel();
    reload_on_hangup(reload_trigger);
    let outcome = match cli {
        Some(cli) => cli::run(cli, shutdown, reload_requests).await,
        None => plugin::run(shutdown, reload_requests).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The only signal handler of the program: SIGINT or SIGTERM cancels `shutdown`.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// SIGHUP asks for a TLS certificate reload. The handler is installed before the command
/// runs, so a SIGHUP never kills a started listener.
fn reload_on_hangup(trigger: ReloadTrigger) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot install the SIGHUP handler; certificates reload on file change only"
        );
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the TLS certificate");
            trigger.request();
        }
    });
}
