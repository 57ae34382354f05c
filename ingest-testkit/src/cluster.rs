//! Clusters for the tests in which one broker node or the database server fails, apart from the
//! machine's own services (which they never touch):
//! - [`RabbitCluster`]: the 3-node RabbitMQ cluster of `scripts/cluster/rabbitmq.sh`, one for the
//!   whole test run (started by the first test that asks for it, stopped by `scripts/test.sh`
//!   at its exit). The tests that use it take turns (an exclusive lock on one file), and
//!   whatever happens in a test, dropping its [`RabbitCluster`] starts again every node it
//!   stopped: the next test finds the cluster whole;
//! - [`PostgresPair`]: a PostgreSQL primary with a standby of `scripts/cluster/postgres.sh`, a
//!   test's own on two free ports; dropping it ends both servers (and anything a test froze)
//!   and removes their data.
//!
//! The scripts run with [`std::process::Command`], blocking, as [`crate::outage`] runs
//! `pg_ctlcluster` and `rabbitmqctl`; a script that fails panics with its stderr.

use rand::Rng;
use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, PoisonError};

/// The shared 3-node RabbitMQ cluster, held for one test's turn.
pub struct RabbitCluster {
    /// The AMQP URLs of nodes 1, 2 and 3, comma-separated (an `AMQP_URL` for the whole
    /// cluster).
    pub urls: String,
    /// Nodes this test stopped and did not start again.
    stopped: Mutex<BTreeSet<usize>>,
    /// Held exclusively while the test has the cluster.
    turn: File,
}

impl RabbitCluster {
    /// Waits for this test's turn at the cluster, then starts it (if it is not already up and
    /// joined) and returns it. Keep it for the test's whole life.
    pub fn shared() -> RabbitCluster {
        let base = std::env::var("INGEST_RMQ_BASE_PORT").unwrap_or_else(|_| "5681".into());
        let path = std::env::temp_dir().join(format!("ingest-tests.rabbitmq-cluster-{base}.lock"));
        let turn = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("the RabbitMQ cluster lock file");
        turn.lock().expect("exclusive RabbitMQ cluster lock");
        let urls = run_script("rabbitmq.sh", &["start"]);
        RabbitCluster {
            urls,
            stopped: Mutex::default(),
            turn,
        }
    }

    /// The AMQP URL of node `n` (1..=3) alone.
    pub fn url_of(&self, n: usize) -> String {
        self.urls
            .split(',')
            .nth(n.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no node {n} in {}", self.urls))
            .to_string()
    }

    /// Stops the RabbitMQ application of node `n` (1..=3): its connections are closed, its
    /// queues' leaders move to the other nodes. The Erlang node stays up.
    pub fn stop_node(&self, n: usize) {
        assert!((1..=3).contains(&n), "no node {n}");
        self.stopped().insert(n);
        run_script("rabbitmq.sh", &["stop-node", &n.to_string()]);
    }

    /// Starts the application of node `n` again and waits until it has booted.
    pub fn start_node(&self, n: usize) {
        assert!((1..=3).contains(&n), "no node {n}");
        run_script("rabbitmq.sh", &["start-node", &n.to_string()]);
        self.stopped().remove(&n);
    }

    /// The node (1..=3) leading the quorum queue `queue` of vhost `/`; panics when the cluster
    /// names none (see [`RabbitCluster::try_leader`]).
    pub fn leader(&self, queue: &str) -> usize {
        let answer = run_script("rabbitmq.sh", &["leader", queue]);
        answer
            .parse()
            .unwrap_or_else(|_| panic!("rabbitmq.sh leader {queue} said {answer:?}"))
    }

    /// The leader of `queue` if the cluster names one now (not while no node that runs knows
    /// the queue, say): for polling until the leader has moved.
    pub fn try_leader(&self, queue: &str) -> Option<usize> {
        try_script("rabbitmq.sh", &["leader", queue])
            .ok()
            .and_then(|answer| answer.parse().ok())
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let stopped = std::mem::take(&mut *self.stopped());
        for n in stopped {
            if let Err(fault) = try_script("rabbitmq.sh", &["start-node", &n.to_string()]) {
                eprintln!("RabbitMQ cluster node {n} not started again: {fault}");
            }
        }
        let _ = self.turn.unlock();
    }
}

/// A PostgreSQL primary with a standby (`standby1`) on two ports of its own.
pub struct PostgresPair {
    /// The port the primary was started on, then the standby's.
    pub ports: [u16; 2],
    base_url: String,
    /// Locks on the two ports, so that no other test process picks them meanwhile.
    _port_locks: [File; 2],
}

impl PostgresPair {
    /// A fresh pair on two free ports: replication synchronous if `sync`, else asynchronous.
    /// Returns once the standby streams (in sync, with `sync`).
    pub fn start(sync: bool) -> PostgresPair {
        let (ports, port_locks) = free_ports();
        let mode = if sync { "--sync" } else { "--async" };
        let list = format!("{},{}", ports[0], ports[1]);
        match try_script("postgres.sh", &["--ports", &list, "start", mode]) {
            Ok(base_url) => PostgresPair {
                ports,
                base_url,
                _port_locks: port_locks,
            },
            Err(fault) => {
                // Whatever started before the failure is ended.
                let _ = try_script("postgres.sh", &["--ports", &list, "stop"]);
                panic!("{fault}");
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2`, no database.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Database `db` on whichever of the two takes writes (what the coordinator and workers are
    /// given): `…/db?target_session_attrs=read-write`.
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}?target_session_attrs=read-write", self.base_url)
    }

    /// Database `db` on the server started as the primary alone (down after a failover).
    pub fn primary_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.ports[0])
    }

    /// Database `db` on the server started as the standby alone (the primary after a
    /// failover).
    pub fn standby_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.ports[1])
    }

    /// Kills the primary (immediate stop) and promotes the standby, which then takes writes
    /// without waiting for a synchronous standby.
    pub fn failover(&self) {
        self.script(&["failover"]);
    }

    /// Once the standby has replayed everything the primary wrote so far, cuts it off: what
    /// the primary commits from then on is not on the standby (and is lost at a failover).
    /// With synchronous replication, commits wait meanwhile.
    pub fn pause_replication(&self) {
        self.script(&["pause-replication"]);
    }

    /// The standby streams from the primary again (and catches up).
    pub fn resume_replication(&self) {
        self.script(&["resume-replication"]);
    }

    /// `postgres.sh status`: which port is primary, each server's role, the replication.
    pub fn status(&self) -> String {
        self.script(&["status"])
    }

    fn ports_arg(&self) -> String {
        format!("{},{}", self.ports[0], self.ports[1])
    }

    fn script(&self, args: &[&str]) -> String {
        let ports = self.ports_arg();
        let mut all = vec!["--ports", ports.as_str()];
        all.extend_from_slice(args);
        run_script("postgres.sh", &all)
    }
}

impl Drop for PostgresPair {
    fn drop(&mut self) {
        if let Err(fault) = try_script("postgres.sh", &["--ports", &self.ports_arg(), "stop"]) {
            eprintln!(
                "PostgreSQL pair on {} not stopped: {fault}",
                self.ports_arg()
            );
        }
    }
}

/// Two free ports in 26000..32000: under Linux's ephemeral range (32768 and up), over the
/// RabbitMQ cluster's distribution ports (25681..), each locked by a file in the temp folder
/// while the pair lives, and free to listen on now.
fn free_ports() -> ([u16; 2], [File; 2]) {
    let mut rng = rand::rng();
    let mut found: Vec<(u16, File)> = Vec::new();
    for _ in 0..1_000 {
        let port: u16 = rng.random_range(26_000..32_000);
        if found.iter().any(|(taken, _)| *taken == port) {
            continue;
        }
        let path = std::env::temp_dir().join(format!("ingest-tests.pg-port-{port}.lock"));
        let Ok(lock) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if lock.try_lock().is_err() || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        found.push((port, lock));
        if found.len() == 2 {
            let (second, second_lock) = found.pop().unwrap();
            let (first, first_lock) = found.pop().unwrap();
            return ([first, second], [first_lock, second_lock]);
        }
    }
    panic!("no two free ports in 26000..32000");
}

/// `scripts/cluster/<name>`.
fn script_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/cluster")
        .join(name)
}

/// Runs `scripts/cluster/<name> <args>`; its stdout, trimmed. Panics with its stderr if it fails.
fn run_script(name: &str, args: &[&str]) -> String {
    try_script(name, args).unwrap_or_else(|fault| panic!("{fault}"))
}

/// Runs `scripts/cluster/<name> <args>`: its stdout, trimmed, or why it failed (with its
/// stderr). Its stderr (the script's log) is passed on to the test's.
fn try_script(name: &str, args: &[&str]) -> Result<String, String> {
    let path = script_path(name);
    let output = Command::new(&path)
        .args(args)
        .output()
        .map_err(|error| format!("cannot run {}: {error}", path.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "{name} {} failed ({}):\n{stderr}",
            args.join(" "),
            output.status
        ));
    }
    eprint!("{stderr}");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
