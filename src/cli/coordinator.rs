//! `idunno coordinator`: runs one coordinator until SIGINT/SIGTERM.

use super::outln;
use anyhow::Context;
use idunno_coordinator::CoordinatorConfig;
use tokio::net::TcpListener;

pub async fn run(config: CoordinatorConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let handle = idunno_coordinator::start(config, listener).await?;
    outln!(
        "coordinator {} listening on {}",
        handle.coordinator.id,
        handle.addr
    );
    super::signal::shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
