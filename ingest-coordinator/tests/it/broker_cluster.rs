//! RabbitMQ as production runs it: a 3-node cluster ([`RabbitCluster`], on its own ports, apart
//! from the machine's broker), the chunk queue a quorum queue with members on every node, and
//! `AMQP_URL` listing the three nodes. Every process of these tests starts on node 1
//! (`INGEST_AMQP_IN_ORDER`), which also leads the chunk queue (declared through it); the tests
//! stop node 1 at a chosen moment. Every process must go on with another node by itself: a
//! publish whose confirm was lost is published again, a delivery in hand comes again, and the
//! ledger keeps each chunk exactly once.
//!
//! Each test ends with its batch committed exactly — per day, rows and sum of prices against the
//! file — and every process on another node, the workers consuming there.

use ingest_core::broker::Nodes;
use ingest_core::chunk::ChunkState;
use ingest_testkit::cluster::RabbitCluster;
use ingest_testkit::process::{free_port, sibling_binary, start_worker_with, Spawned};
use ingest_testkit::{fetch_text, poll, rates_file, Options, TestEnv};
use ingest_wire::{BatchId, BatchState, Readiness, WorkerReadiness};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(180);

/// A test's cluster, its environment on it and (once started) two worker processes, each with
/// its health listener.
struct OnCluster {
    cluster: RabbitCluster,
    env: TestEnv,
    workers: Vec<(Spawned, String)>,
}

impl OnCluster {
    /// The environment, its coordinator on node 1, which leads the chunk queue.
    async fn start() -> OnCluster {
        let cluster = RabbitCluster::shared();
        let env = TestEnv::start(Options {
            workers: 0,
            amqp_url: Some(cluster.urls.clone()),
            ..Options::default()
        })
        .await;
        let on = OnCluster {
            cluster,
            env,
            workers: Vec::new(),
        };
        let first = node(&on.cluster, 1);
        on.wait_everyone(|node| node == first, "the coordinator on node 1")
            .await;
        assert_eq!(
            on.cluster.leader(&on.env.queue),
            1,
            "the chunk queue is led by the node it was declared through"
        );
        on
    }

    /// Starts the two workers and waits until they consume, on node 1.
    async fn start_workers(&mut self) {
        let exe = sibling_binary("ingest-worker");
        let env = &self.env;
        self.workers = (0..2)
            .map(|i| {
                let listen = format!("127.0.0.1:{}", free_port());
                let worker = start_worker_with(
                    &exe,
                    env,
                    &format!("cluster-worker-{i}"),
                    &listen,
                    &[("INGEST_WORKER_CONCURRENCY", "1")],
                );
                (worker, listen)
            })
            .collect();
        let first = node(&self.cluster, 1);
        self.wait_everyone(|node| node == first, "every process on node 1")
            .await;
    }

    /// Waits until the coordinator and every worker are ready on a node that `on_node` accepts.
    async fn wait_everyone(&self, on_node: impl Fn(&str) -> bool, what: &str) {
        let on_node = &on_node;
        poll(what, WITHIN, || async move {
            let (code, ready) = self.env.get("/readyz").await;
            let ready: Readiness = serde_json::from_value(ready).ok()?;
            if code != 200 || !on_node(&ready.rabbitmq_node) {
                return None;
            }
            for (_, listen) in &self.workers {
                let (code, text) = fetch_text(&self.env.http, listen, "/readyz").await;
                let ready: WorkerReadiness = serde_json::from_str(&text).ok()?;
                if code != 200 || !ready.consuming || !on_node(&ready.rabbitmq_node) {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    /// After node 1 was stopped: the batch committed exactly, every process ready on another
    /// node, and the queue led by another node.
    async fn assert_moved_on(&self, id: BatchId, seed: u64, rows: u64) {
        let status = self.env.wait_final(id, WITHIN).await;
        assert_eq!(status.state, BatchState::Committed, "{status:#?}");
        assert_eq!(
            self.env.batch_by_day(id).await,
            rates_file::expected_by_day(seed, rows)
        );
        let first = node(&self.cluster, 1);
        self.wait_everyone(|node| node != first, "every process on another node")
            .await;
        let leader = self.cluster.try_leader(&self.env.queue);
        assert!(
            leader.is_some_and(|leader| leader != 1),
            "the chunk queue's leader moved ({leader:?})"
        );
        // And they load there: a fresh batch commits whole.
        let again = self.env.submit_generated(89, 20_000).await;
        let status = self.env.wait_final(again, WITHIN).await;
        assert_eq!(status.state, BatchState::Committed, "{status:#?}");
        assert_eq!(
            self.env.batch_totals(again).await,
            rates_file::expected(89, 20_000)
        );
    }
}

/// Node `n` as `host:port`, as `/readyz` names it.
fn node(cluster: &RabbitCluster, n: usize) -> String {
    let url = cluster.url_of(n);
    Nodes::parse(&url).expect("a node URL").label(0).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_everyone_is_on_stopped_during_an_upload() {
    let mut on = OnCluster::start().await;
    on.start_workers().await;
    const ROWS: u64 = 400_000;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    // A slow client (4 s at least): the node goes while the upload is coming in.
    let body = rates_file::paced(codes, 87, ROWS, Duration::from_millis(100));
    let env = &on.env;
    let ((code, answer, answered), stopped) = tokio::join!(
        async {
            let (code, answer) = env.submit(body).await;
            (code, answer, Instant::now())
        },
        async {
            poll("the upload to be under way", WITHIN, || async move {
                let recorded: i64 = env
                    .db
                    .query_one("SELECT count(*) FROM chunks", &[])
                    .await
                    .unwrap()
                    .get(0);
                (recorded >= 4).then_some(())
            })
            .await;
            tokio::task::block_in_place(|| on.cluster.stop_node(1));
            Instant::now()
        }
    );
    assert_eq!(code, 202, "{answer:?}");
    assert!(
        answered > stopped,
        "the node was gone before the upload ended"
    );
    on.assert_moved_on(answer.id(), 87, ROWS).await;
    tokio::task::block_in_place(|| on.cluster.start_node(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_everyone_is_on_stopped_while_workers_load() {
    let mut on = OnCluster::start().await;
    const ROWS: u64 = 600_000;
    // The workers start once the whole batch is in (else they load it during the upload).
    let id = on.env.submit_generated(88, ROWS).await;
    on.start_workers().await;
    let env = &on.env;
    let loaded = poll("chunks to be loaded", WITHIN, || async move {
        let loaded = env.chunks_in(id, ChunkState::Loaded).await;
        (loaded >= 3).then_some(loaded)
    })
    .await;
    assert!(
        loaded + 10 < (ROWS / 5_000) as i64,
        "{loaded} chunks loaded"
    );
    tokio::task::block_in_place(|| on.cluster.stop_node(1));
    on.assert_moved_on(id, 88, ROWS).await;
    tokio::task::block_in_place(|| on.cluster.start_node(1));
}
