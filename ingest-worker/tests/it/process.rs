//! The `ingest-worker` process as an operator meets it, against a real coordinator: when the
//! broker closes its connection (as a broker restart does) or only its channel, it subscribes
//! again by itself and loads again; when its queue is deleted it exits non-zero with one line,
//! instead of staying up as a worker that does nothing.

use ingest_testkit::outage::close_channels_of;
use ingest_testkit::process::{start_worker, Spawned};
use ingest_testkit::{Options, TestEnv};
use std::process::Command;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ingest-worker");
const WITHIN: Duration = Duration::from_secs(60);

/// The broker's process id for the connection named `name`, if it has one.
fn connection_pid(name: &str) -> Option<String> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl list_connections");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_string)
}

/// A coordinator without workers, and one worker process consuming from its queue; the
/// worker's connection name.
async fn one_worker_consuming() -> (TestEnv, Spawned, String) {
    let env = TestEnv::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let name = format!("proc-{}", env.queue);
    let worker = start_worker(EXE, &env, &name, "127.0.0.1:0");
    env.wait_until("the worker to consume", WITHIN, || async {
        env.consumers().await == 1
    })
    .await;
    (env, worker, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_comes_back_and_a_deleted_queue_ends_the_worker() {
    let (env, mut worker, name) = one_worker_consuming().await;

    // The broker closes the worker's connection: it reconnects and consumes again.
    let first = connection_pid(&name).expect("the worker's connection");
    let closed = Command::new("rabbitmqctl")
        .args([
            "-q",
            "close_connection",
            &first,
            "test: closed by the broker",
        ])
        .status()
        .unwrap();
    assert!(closed.success());
    env.wait_until("a new connection of the worker", WITHIN, || async {
        connection_pid(&name).is_some_and(|pid| pid != first)
    })
    .await;
    env.wait_until("the worker to consume again", WITHIN, || async {
        env.consumers().await == 1
    })
    .await;
    env.submit_sample_committed(WITHIN).await;
    assert_eq!(env.prices_count().await, 56_689);
    assert!(worker.is_running());

    // The queue is deleted under it: the broker cancels its consumer, for good.
    let connection = ingest_testkit::amqp_connection("deleter").await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(env.queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    let exit = worker.wait(WITHIN);
    assert!(!exit.success(), "{exit}");
    let logs = worker.logs();
    let last = logs.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "ingest-worker: RabbitMQ cancelled this worker's consumer: the queue {} was deleted",
            env.queue
        ),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_broker_closed_is_replaced_and_the_worker_loads_again() {
    let (env, mut worker, name) = one_worker_consuming().await;
    let connection = connection_pid(&name).expect("the worker's connection");

    // The broker closes the worker's channel (not its connection), twice.
    for closed in 1..=2 {
        assert_eq!(close_channels_of(&format!("ingest-worker {name}")), 1);
        env.wait_until("the worker to subscribe again", WITHIN, || async {
            worker.logs().matches("consuming again").count() == closed
        })
        .await;
        assert_eq!(env.consumers().await, 1);
    }
    assert_eq!(connection_pid(&name), Some(connection), "same connection");
    env.submit_sample_committed(WITHIN).await;
    assert_eq!(env.prices_count().await, 56_689);
    assert!(worker.is_running(), "{}", worker.logs());
}
