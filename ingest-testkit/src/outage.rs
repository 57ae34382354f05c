//! Real outages for the tests that need them: PostgreSQL stopped and started with
//! `pg_ctlcluster`, RabbitMQ with `rabbitmqctl stop_app` / `start_app` — the services every test
//! shares. Two things keep that safe:
//! - [`Turn`]: every test environment holds a shared lock on one file for its whole life, and a
//!   test that stops a service holds it exclusively, so it runs alone, in whatever order nextest
//!   starts the test processes;
//! - [`Services`]: whatever happens in the test (a failed assertion, a panic), dropping it starts
//!   both services again and waits until they answer. (`scripts/test.sh` does the same in a trap,
//!   for a test process that was killed.)

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

/// A test's turn at the shared services.
pub struct Turn(File);

impl Turn {
    /// Waits for the turn: shared with other environments, or exclusive.
    pub fn take(exclusive: bool) -> Turn {
        let path = std::env::temp_dir().join("ingest-tests.services.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("the services lock file");
        if exclusive {
            file.lock().expect("exclusive services lock");
        } else {
            file.lock_shared().expect("shared services lock");
        }
        Turn(file)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Stops and starts the local PostgreSQL and RabbitMQ; starts both again when dropped.
#[derive(Default)]
pub struct Services;

impl Services {
    /// Controls the services (the caller's environment must be `exclusive`).
    pub fn new() -> Services {
        Services
    }

    /// PostgreSQL's fast shutdown: every session is ended (`57P01`), new ones are refused.
    pub fn stop_postgres(&self) {
        pg_ctlcluster(&["stop", "-m", "fast"]);
    }

    /// Starts PostgreSQL and waits until it takes connections.
    pub fn start_postgres(&self) {
        pg_ctlcluster(&["start"]);
        wait_for("PostgreSQL", postgres_answers);
    }

    /// Stops the RabbitMQ application (the node stays up; connections are closed).
    pub fn stop_rabbitmq(&self) {
        run("rabbitmqctl", &["-q", "stop_app"]);
    }

    /// Starts the RabbitMQ application and waits until it takes connections.
    pub fn start_rabbitmq(&self) {
        run("rabbitmqctl", &["-q", "start_app"]);
        run("rabbitmqctl", &["-q", "await_startup"]);
        wait_for("RabbitMQ", rabbitmq_answers);
    }
}

/// Makes RabbitMQ close every channel of the connection named `connection_name` (a channel-level
/// error, as the broker raises for an unknown delivery tag), leaving the connection up; returns
/// how many it closed. Touches only that client, so it needs no exclusive turn.
pub fn close_channels_of(connection_name: &str) -> usize {
    let erlang = format!(
        "Name = <<\"{connection_name}\">>, \
         length([rabbit_channel:do(Ch, {{'basic.ack', 999999999, false}}) \
                 || Ch <- rabbit_channel:list(), \
                    [{{connection, Conn}}] <- [rabbit_channel:info(Ch, [connection])], \
                    [{{client_properties, Props}}] <- [rabbit_reader:info(Conn, [client_properties])], \
                    lists:member({{<<\"connection_name\">>, longstr, Name}}, Props)])."
    );
    let output = Command::new("rabbitmqctl")
        .args(["-q", "eval", &erlang])
        .output()
        .expect("rabbitmqctl eval");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("rabbitmqctl eval said {output:?}"))
}

impl Drop for Services {
    fn drop(&mut self) {
        if !postgres_answers() {
            pg_ctlcluster(&["start"]);
            wait_for("PostgreSQL", postgres_answers);
        }
        if !rabbitmq_answers() {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .status();
            wait_for("RabbitMQ", rabbitmq_answers);
        }
    }
}

/// `pg_ctlcluster <version> main <args>` for the one installed cluster.
fn pg_ctlcluster(args: &[&str]) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster");
    let mut all = vec!["--skip-systemctl-redirect", version.as_str(), "main"];
    all.extend_from_slice(args);
    run("pg_ctlcluster", &all);
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn postgres_answers() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|status| status.success())
}

fn rabbitmq_answers() -> bool {
    std::net::TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(1))
        .is_ok()
}

/// Polls `check` for up to two minutes.
fn wait_for(what: &str, check: fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}
