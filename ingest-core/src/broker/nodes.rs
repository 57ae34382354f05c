//! Nodes: the RabbitMQ nodes a process may connect to, read from `AMQP_URL` — one URL, or the
//! URLs of a cluster's nodes separated by commas. A cluster without a load balancer in front of
//! it is reached this way: when the node in use goes away, the [`super::Link`] goes on with
//! another one.
//!
//! A process starts at a node picked at random ([`Start::Random`], the default), so that a fleet
//! of workers and coordinators started with the same `AMQP_URL` spreads over the nodes instead of
//! piling onto the first (a quorum queue is reached through any node; its leader is wherever
//! RabbitMQ put it). [`Start::Listed`] (`INGEST_AMQP_IN_ORDER=true`) starts at the first listed
//! node that answers instead: for a preferred node (the nearest zone), and for the tests, which
//! must know where every process is. After a connection broke, a process tries the next node in
//! the list, then the others in turn, the broken one last.

use lapin::uri::AMQPUri;
use std::fmt;

/// Where a process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At a node picked at random.
    Random,
    /// At the first listed node that answers.
    Listed,
}

impl Start {
    /// [`Start::Listed`] when `in_order` (the setting `INGEST_AMQP_IN_ORDER`), else random.
    pub fn in_order(in_order: bool) -> Start {
        if in_order {
            Start::Listed
        } else {
            Start::Random
        }
    }
}

/// The listed nodes, in the order given; never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Nodes {
    urls: Vec<String>,
    labels: Vec<String>,
}

/// Why `AMQP_URL` does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodesError {
    /// Nothing between the commas.
    #[error("AMQP_URL lists no RabbitMQ node")]
    Empty,
    /// One of the URLs is not an AMQP URL.
    #[error("AMQP_URL's URL number {position} ({url}) does not read: {reason}")]
    Unreadable {
        /// 1 for the first URL.
        position: usize,
        /// The URL without its password.
        url: String,
        /// What the URL parser said.
        reason: String,
    },
}

impl Nodes {
    /// Reads `text`: URLs separated by commas (spaces around them are ignored).
    pub fn parse(text: &str) -> Result<Nodes, NodesError> {
        let mut urls = Vec::new();
        let mut labels = Vec::new();
        for (index, url) in text.split(',').map(str::trim).enumerate() {
            if url.is_empty() {
                continue;
            }
            let uri = url
                .parse::<AMQPUri>()
                .map_err(|reason| NodesError::Unreadable {
                    position: index + 1,
                    url: crate::db::redact(url),
                    reason: reason.to_string(),
                })?;
            labels.push(format!("{}:{}", uri.authority.host, uri.authority.port));
            urls.push(url.to_string());
        }
        if urls.is_empty() {
            return Err(NodesError::Empty);
        }
        Ok(Nodes { urls, labels })
    }

    /// How many nodes are listed.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never true: a `Nodes` lists at least one.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The URL of node `index` (taken modulo the count).
    pub fn url(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    /// Node `index` as `host:port`, for logs, `/readyz` and the metrics' labels.
    pub fn label(&self, index: usize) -> &str {
        &self.labels[index % self.labels.len()]
    }

    /// Every node as `host:port`, in the order given.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The node a process tries first.
    pub fn first(&self, start: Start) -> usize {
        use std::hash::{BuildHasher, Hasher};
        match start {
            Start::Listed => 0,
            Start::Random => {
                let random = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                (random % self.urls.len() as u64) as usize
            }
        }
    }

    /// The order in which to try the nodes after node `broken` failed: the ones after it in
    /// turn, then itself.
    pub fn after(&self, broken: usize) -> impl Iterator<Item = usize> + '_ {
        (1..=self.urls.len()).map(move |step| (broken + step) % self.urls.len())
    }
}

/// Shows the nodes without their passwords.
impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.labels).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_are_several_nodes_in_their_order() {
        let nodes = Nodes::parse(
            "amqp://guest:guest@10.0.0.1:5672/%2f, amqp://guest:guest@10.0.0.2:5673/%2f,amqp://u:p@rabbit-3/v",
        )
        .unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(
            nodes.labels(),
            ["10.0.0.1:5672", "10.0.0.2:5673", "rabbit-3:5672"]
        );
        assert_eq!(nodes.url(1), "amqp://guest:guest@10.0.0.2:5673/%2f");
        assert!(nodes.first(Start::Random) < 3);
        assert_eq!(nodes.first(Start::Listed), 0);
    }

    #[test]
    fn after_a_broken_node_the_next_ones_come_first_and_it_comes_last() {
        let nodes = Nodes::parse("amqp://a,amqp://b,amqp://c").unwrap();
        assert_eq!(nodes.after(1).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(nodes.after(2).collect::<Vec<_>>(), [0, 1, 2]);
        let one = Nodes::parse("amqp://a").unwrap();
        assert_eq!(one.after(0).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_bad_url_is_named_by_its_place_without_its_password() {
        assert_eq!(Nodes::parse(" , "), Err(NodesError::Empty));
        let error = Nodes::parse("amqp://a,http://u:secret@b").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("AMQP_URL's URL number 2"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(
            super::super::redact("amqp://g:pw@a/%2f,amqp://g:pw@b/%2f"),
            "amqp://g@a/%2f,amqp://g@b/%2f"
        );
    }
}
