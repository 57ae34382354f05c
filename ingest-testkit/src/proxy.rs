//! A TCP proxy in front of the tests' PostgreSQL that misbehaves the way a network or a host can,
//! once, on cue — for the faults that a restart or a SIGSTOP cannot make:
//! - [`Fault::CutReplyTo`]: the server's answer to a statement is lost with the connection (the
//!   statement took effect; the client never hears so), as when a link breaks at the wrong
//!   moment;
//! - [`Fault::DamageRowOver`]: one byte of a large row the server sends is flipped on the way, as
//!   a bad memory or NIC on the reading host would.
//!
//! It understands just enough of PostgreSQL's protocol to find message boundaries in what the
//! server sends (every server message is a type byte and a 4-byte length). Each fault fires once;
//! afterwards the proxy only forwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does, once.
#[derive(Debug, Clone)]
pub enum Fault {
    /// After a client sends a statement containing this text, the connection is closed in place
    /// of the server's `CommandComplete` for it (and nothing after it is forwarded).
    CutReplyTo(String),
    /// The first data row the server sends that is longer than this many bytes has its last
    /// byte flipped.
    DamageRowOver(usize),
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// Where it listens (127.0.0.1).
    pub port: u16,
    fired: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to PostgreSQL at `upstream` that does `fault` once.
    pub async fn start(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let fired = Arc::new(AtomicUsize::new(0));
        let spent = Arc::new(AtomicBool::new(false));
        let counter = fired.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(serve(
                    client,
                    server,
                    fault.clone(),
                    spent.clone(),
                    counter.clone(),
                ));
            }
        });
        Proxy { port, fired, task }
    }

    /// `url` (a `postgres://…@host:port/db` URL) pointed at this proxy instead.
    pub fn url(&self, url: &str) -> String {
        point_at(url, self.port)
    }

    /// How many times its fault fired (0 or 1).
    pub fn fired(&self) -> usize {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `url` with its host and port replaced by `127.0.0.1:port`.
fn point_at(url: &str, port: u16) -> String {
    let authority = url.find("://").map(|at| at + 3).unwrap_or(0);
    let at = url[authority..]
        .find('@')
        .map(|at| authority + at + 1)
        .unwrap_or(authority);
    let end = url[at..].find('/').map(|end| at + end).unwrap_or(url.len());
    format!("{}127.0.0.1:{port}{}", &url[..at], &url[end..])
}

/// One client connection: client → server forwarded as it is (watched for the statement of a
/// [`Fault::CutReplyTo`]), server → client message by message.
async fn serve(
    client: TcpStream,
    server: TcpStream,
    fault: Fault,
    spent: Arc<AtomicBool>,
    fired: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let armed = Arc::new(AtomicBool::new(false));
    let marker = match &fault {
        Fault::CutReplyTo(text) => Some(text.as_bytes().to_vec()),
        Fault::DamageRowOver(_) => None,
    };
    let arm = armed.clone();
    let spent_up = spent.clone();
    let upstream = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            if let Some(marker) = &marker {
                if !spent_up.load(Ordering::SeqCst)
                    && buffer[..read]
                        .windows(marker.len())
                        .any(|window| window == marker.as_slice())
                {
                    arm.store(true, Ordering::SeqCst);
                }
            }
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    'pump: loop {
        let read = match server_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        pending.extend_from_slice(&buffer[..read]);
        let mut out: Vec<u8> = Vec::new();
        while pending.len() >= 5 {
            let length =
                u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < 1 + length {
                break;
            }
            let mut message: Vec<u8> = pending.drain(..1 + length).collect();
            match &fault {
                Fault::CutReplyTo(_)
                    if message[0] == b'C'
                        && armed.load(Ordering::SeqCst)
                        && !spent.swap(true, Ordering::SeqCst) =>
                {
                    fired.fetch_add(1, Ordering::SeqCst);
                    // What came before the reply goes; the reply and the connection do not.
                    let _ = client_write.write_all(&out).await;
                    break 'pump;
                }
                Fault::DamageRowOver(over)
                    if message[0] == b'D'
                        && message.len() > *over
                        && !spent.swap(true, Ordering::SeqCst) =>
                {
                    fired.fetch_add(1, Ordering::SeqCst);
                    let last = message.len() - 1;
                    message[last] ^= 0x5a;
                }
                _ => {}
            }
            out.extend_from_slice(&message);
        }
        if client_write.write_all(&out).await.is_err() {
            break;
        }
    }
    upstream.abort();
    let _ = client_write.shutdown().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_pointed_at_the_proxy() {
        assert_eq!(
            super::point_at("postgres://postgres@127.0.0.1:5432/db", 7),
            "postgres://postgres@127.0.0.1:7/db"
        );
        assert_eq!(
            super::point_at("postgres://h/db?x=1", 7),
            "postgres://127.0.0.1:7/db?x=1"
        );
    }
}
