//! The heartbeat: every quarter of the coordinator lease this coordinator notes in the ledger
//! that it is alive (`ledger::beat`), and notes in its [`Presence`](crate::presence::Presence)
//! whether that got through. Now and then it forgets coordinators gone for a day. On stop it
//! leaves the ledger, so that its peers need not wait out its lease.

use crate::state::AppState;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Coordinator};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Coordinators not seen for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Beats until `shutdown`, then leaves.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let period = (app.presence.lease() / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match beat(&app).await {
            Ok(()) => app.presence.beat_landed(),
            Err(fault) => {
                app.presence.beat_missed();
                tracing::warn!(%fault, "heartbeat did not get through; will try again");
            }
        }
        beats += 1;
        if beats.is_multiple_of(1000) {
            forget(&app).await;
        }
    }
    if let Err(fault) = leave(&app).await {
        tracing::warn!(%fault, "could not leave the ledger; peers wait out this coordinator's lease");
    }
}

/// One heartbeat.
pub async fn beat(app: &AppState) -> Result<(), Fault> {
    let client = app.pool.get().await?;
    let listen = app.config.listen.to_string();
    let host = crate::presence::host_name();
    ledger::beat(
        &client,
        &Coordinator {
            id: app.presence.id(),
            host: &host,
            pid: std::process::id(),
            listen: &listen,
            lease: app.presence.lease(),
        },
    )
    .await?;
    Ok(())
}

async fn leave(app: &AppState) -> Result<(), Fault> {
    let client = app.pool.get().await?;
    ledger::leave(&client, app.presence.id()).await?;
    Ok(())
}

async fn forget(app: &AppState) {
    if let Ok(client) = app.pool.get().await {
        match ledger::forget_gone(&client, FORGET_AFTER).await {
            Ok(0) | Err(_) => {}
            Ok(forgotten) => tracing::info!(forgotten, "forgot coordinators gone for a day"),
        }
    }
}
