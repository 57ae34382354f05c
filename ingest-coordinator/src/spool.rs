//! The spool: the coordinator's durable copy of every chunk it published, one file per chunk,
//! kept until the chunk's batch commits or fails. RabbitMQ holds a message only until a worker
//! acknowledges it; the spool lets the coordinator hand a chunk out again at any time before the
//! commit (a failed attempt, an expired lease, a publish that was never confirmed), also after
//! the coordinator restarts. It must live on a persistent volume.

use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the chunk files live.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// A spool rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    /// The spool's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn batch_dir(&self, batch_id: i64) -> PathBuf {
        self.dir.join(format!("batch-{batch_id}"))
    }

    fn chunk_path(&self, batch_id: i64, seq: i32) -> PathBuf {
        self.batch_dir(batch_id).join(format!("chunk-{seq}.copy"))
    }

    /// Writes a chunk durably (fsynced) before it is published.
    pub async fn write(&self, batch_id: i64, seq: i32, payload: Bytes) -> std::io::Result<()> {
        let dir = self.batch_dir(batch_id);
        let path = self.chunk_path(batch_id, seq);
        let temp = path.with_extension("tmp");
        // `Bytes` is shared, not copied, with the blocking thread.
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&payload)?;
            file.sync_data()?;
            std::fs::rename(&temp, &path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Reads a chunk back, to publish it again.
    pub async fn read(&self, batch_id: i64, seq: i32) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.chunk_path(batch_id, seq)).await
    }

    /// Removes every chunk of a batch that is final.
    pub async fn remove_batch(&self, batch_id: i64) {
        match tokio::fs::remove_dir_all(self.batch_dir(batch_id)).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(batch_id, %error, "cannot remove spooled chunks"),
        }
    }
}
