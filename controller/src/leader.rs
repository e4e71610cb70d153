//! Leader election through a `coordination.k8s.io` Lease, so several
//! controller replicas can run and exactly one reconciles.

use std::time::Duration;

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::time::{Instant, sleep};

/// Holds (or waits for) one Lease.
pub struct LeaderElection {
    lock: LeaseLock,
    ttl: Duration,
    renew_every: Duration,
}

impl LeaderElection {
    /// `holder` must be unique per replica (the pod name); the Lease expires
    /// `ttl` after its holder's last renewal, which happens every `ttl / 3`.
    pub fn new(client: Client, namespace: &str, lease: &str, holder: &str, ttl: Duration) -> Self {
        let params = LeaseLockParams {
            lease_name: lease.to_owned(),
            holder_id: holder.to_owned(),
            lease_ttl: ttl,
        };
        Self {
            lock: LeaseLock::new(client, namespace, params),
            ttl,
            renew_every: ttl / 3,
        }
    }

    /// Returns once this process holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => return,
                Ok(LeaseLockResult::NotAcquired(lease)) => {
                    let holder = lease
                        .spec
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    tracing::debug!(%holder, "another controller leads; standing by");
                }
                Err(error) => tracing::warn!(%error, "cannot acquire the leader Lease"),
            }
            sleep(self.renew_every).await;
        }
    }

    /// Renews the Lease; returns when it is lost (taken over, or not renewed
    /// within its ttl), after which this process must stop reconciling.
    pub async fn hold(&self) {
        let mut renewed = Instant::now();
        loop {
            sleep(self.renew_every).await;
            match self.lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => renewed = Instant::now(),
                Ok(LeaseLockResult::NotAcquired(_)) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot renew the leader Lease");
                    if renewed.elapsed() >= self.ttl {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (when shutting down), so that a standby replica
    /// takes over within a second instead of after the ttl.
    pub async fn release(&self) {
        match self.lock.step_down().await {
            Ok(()) => tracing::info!("released the leader Lease"),
            Err(error) => tracing::warn!(%error, "cannot release the leader Lease"),
        }
    }
}
