//! The real `ingest-coordinator` and `ingest-worker` binaries as child processes on a test
//! environment's database and queue, for tests about the processes themselves: their memory,
//! logs, start-up refusals, signals and exits. Their stderr goes to a file the test can read;
//! they are killed if the test ends early.

use super::TestEnv;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process with its stderr in a file; killed when dropped.
pub struct Spawned {
    child: Child,
    logs: tempfile::NamedTempFile,
}

impl Spawned {
    /// Starts `command` with its stderr going to a file.
    pub fn start(mut command: Command) -> Spawned {
        let logs = tempfile::NamedTempFile::new().expect("log file");
        command.stderr(logs.reopen().expect("log file"));
        let child = command.spawn().expect("start the process");
        Spawned { child, logs }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.logs.path()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit, at most `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(self.child.id(), "-TERM");
        wait_exit(&mut self.child, within)
    }

    /// Waits for the process to exit by itself, at most `within` (then panics).
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        wait_exit(&mut self.child, within)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait for the child").is_none()
    }

    /// Kills the process (SIGKILL, as a host that vanished or the OOM killer would) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process frozen with SIGSTOP — a paused VM, a long stall, a host cut off without a reset:
/// its connections stay open and nothing answers on them. Thawed (SIGCONT) when dropped, whatever
/// happens in the test.
pub struct Frozen(u32);

impl Frozen {
    /// Freezes process `pid`.
    pub fn freeze(pid: u32) -> Frozen {
        signal(pid, "-STOP");
        Frozen(pid)
    }

    /// Thaws it now.
    pub fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// Sends a signal with `kill`.
fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {signal} {pid} failed");
}

/// The path of a binary of this workspace built beside the running test (`target/<profile>/`):
/// the tests of one crate reach another crate's binary this way (`cargo nextest run --workspace`
/// builds them all).
pub fn sibling_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("a target folder");
    assert!(
        path.exists(),
        "{} is not built: run the tests with --workspace",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// The `ingest-worker` binary (pass `env!("CARGO_BIN_EXE_ingest-worker")`) on `env`'s database
/// and queue, named `name` (its RabbitMQ connection is `ingest-worker <name>`), its metrics and
/// health on `listen` (`127.0.0.1:0` when it does not matter).
pub fn start_worker(exe: &str, env: &TestEnv, name: &str, listen: &str) -> Spawned {
    start_worker_with(exe, env, name, listen, &[])
}

/// [`start_worker`] with more settings (environment variables).
pub fn start_worker_with(
    exe: &str,
    env: &TestEnv,
    name: &str,
    listen: &str,
    settings: &[(&str, &str)],
) -> Spawned {
    let mut command = Command::new(exe);
    command
        .env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", &env.amqp_url)
        .env("INGEST_AMQP_IN_ORDER", env.config.amqp_in_order.to_string())
        .env("INGEST_QUEUE", &env.queue)
        .env("INGEST_WORKER_NAME", name)
        .env("INGEST_WORKER_LISTEN", listen)
        .env("INGEST_BACKOFF_MAX_MS", "200")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (name, value) in settings {
        command.env(name, value);
    }
    Spawned::start(command)
}

/// A running coordinator process.
pub struct CoordinatorProcess {
    process: Spawned,
    /// `http://127.0.0.1:port` of its API.
    pub base: String,
}

impl CoordinatorProcess {
    /// The command for `exe` (pass `env!("CARGO_BIN_EXE_ingest-coordinator")`) on `env`'s
    /// database and queue, listening on `port`, with no token and quiet logs unless `settings`
    /// say otherwise.
    pub fn command(exe: &str, env: &TestEnv, port: u16, settings: &[(&str, &str)]) -> Command {
        let mut command = Command::new(exe);
        command
            .env("DATABASE_URL", &env.database_url)
            .env("AMQP_URL", &env.amqp_url)
            .env("INGEST_AMQP_IN_ORDER", env.config.amqp_in_order.to_string())
            .env("INGEST_QUEUE", &env.queue)
            .env("INGEST_LISTEN", format!("127.0.0.1:{port}"))
            .env("INGEST_COMMIT_POLL_MS", "50")
            .env("RUST_LOG", "warn")
            .env_remove("INGEST_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (name, value) in settings {
            command.env(name, value);
        }
        command
    }

    /// Starts the coordinator, points `env` at it and waits until it is ready.
    pub async fn start(exe: &str, env: &mut TestEnv, settings: &[(&str, &str)]) -> Self {
        let process = Self::start_beside(exe, env, settings).await;
        env.base = process.base.clone();
        process
    }

    /// Starts one more coordinator on `env`'s database and queue and waits until it is ready,
    /// leaving `env` pointed where it was.
    pub async fn start_beside(exe: &str, env: &TestEnv, settings: &[(&str, &str)]) -> Self {
        let port = free_port();
        let command = Self::command(exe, env, port, settings);
        let process = CoordinatorProcess {
            process: Spawned::start(command),
            base: format!("http://127.0.0.1:{port}"),
        };
        let base = process.base.clone();
        env.wait_until(
            "the coordinator to be ready",
            Duration::from_secs(60),
            || async {
                env.http
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .map(|response| response.status().is_success())
                    .unwrap_or(false)
            },
        )
        .await;
        process
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything it wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Sends SIGTERM and waits for the exit, at most `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.process.terminate(within)
    }

    /// Kills it (SIGKILL) and waits.
    pub fn kill(&mut self) {
        self.process.kill()
    }
}

/// Waits for `child` to exit, at most `within` (then panics).
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
