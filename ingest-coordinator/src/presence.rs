//! This coordinator's presence in the fleet: an id unique to this run of the process, the lease
//! its peers give it (`INGEST_COORDINATOR_LEASE_SECONDS`), and whether its own heartbeat has
//! been getting through for a whole lease (steady).
//!
//! The heartbeat itself is `loops::presence`. Steadiness guards ending a peer's upload: after an
//! outage of PostgreSQL every coordinator's last beat is old, its peers' included, so a
//! coordinator ends a peer's upload only once it has itself been beating for a whole lease — long
//! enough for a live peer to have beaten again. (A commit lease needs no such guard: a holder
//! that lost its lease to an outage stops, and its commit is finished by whoever took it over.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who this coordinator is to its peers.
#[derive(Debug, Clone)]
pub struct Presence {
    id: Arc<str>,
    lease: Duration,
    /// Since when every heartbeat got through (`None`: the last one failed, or none was sent).
    steady_since: Arc<Mutex<Option<Instant>>>,
}

impl Presence {
    /// A new presence, for a process on `host` with id `pid`: `host-pid-random`.
    pub fn new(host: &str, pid: u32, lease: Duration) -> Presence {
        let random: u32 = rand::random();
        Presence {
            id: format!("{host}-{pid}-{random:08x}").into(),
            lease,
            steady_since: Arc::new(Mutex::new(None)),
        }
    }

    /// The id recorded in the ledger (`coordinators.id`, `batches.receiver`, the commit lease).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long this coordinator may go unseen.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A heartbeat got through.
    pub fn beat_landed(&self) {
        let mut since = self.steady_since.lock().expect("not poisoned");
        since.get_or_insert_with(Instant::now);
    }

    /// A heartbeat did not get through.
    pub fn beat_missed(&self) {
        *self.steady_since.lock().expect("not poisoned") = None;
    }

    /// True when every heartbeat for at least a lease got through: a peer that has not been
    /// seen meanwhile is gone, not merely cut off by an outage both went through.
    pub fn is_steady(&self) -> bool {
        self.steady_since
            .lock()
            .expect("not poisoned")
            .is_some_and(|since| since.elapsed() >= self.lease)
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "coordinator".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_only_after_a_whole_lease_of_beats() {
        let presence = Presence::new("h", 7, Duration::from_millis(30));
        assert!(presence.id().starts_with("h-7-"));
        assert!(!presence.is_steady());
        presence.beat_landed();
        assert!(!presence.is_steady());
        std::thread::sleep(Duration::from_millis(40));
        presence.beat_landed();
        assert!(presence.is_steady());
        presence.beat_missed();
        assert!(!presence.is_steady());
    }
}
