//! The spool: the coordinator's durable copy of every chunk it published, one file per chunk,
//! kept until the chunk's batch commits or fails. RabbitMQ holds a message only until a worker
//! acknowledges it; the spool lets the coordinator hand a chunk out again at any time before the
//! commit (a failed attempt, an expired lease, a publish that was never confirmed), also after
//! the coordinator restarts. It must live on a persistent volume.

use bytes::Bytes;
use ingest_core::batch::BatchId;
use ingest_core::chunk::ChunkSeq;
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

    fn batch_dir(&self, batch_id: BatchId) -> PathBuf {
        self.dir.join(format!("batch-{batch_id}"))
    }

    fn chunk_path(&self, batch_id: BatchId, seq: ChunkSeq) -> PathBuf {
        self.batch_dir(batch_id).join(format!("chunk-{seq}.copy"))
    }

    /// Writes a chunk durably before it is published: the file's data, then (after the rename
    /// that gives it its name) the folder that holds the name, and the spool's own folder when
    /// the batch's folder is new — so a crash of the machine cannot lose a chunk RabbitMQ has.
    pub async fn write(
        &self,
        batch_id: BatchId,
        seq: ChunkSeq,
        payload: Bytes,
    ) -> std::io::Result<()> {
        let root = self.dir.clone();
        let dir = self.batch_dir(batch_id);
        let path = self.chunk_path(batch_id, seq);
        let temp = path.with_extension("tmp");
        // `Bytes` is shared, not copied, with the blocking thread.
        tokio::task::spawn_blocking(move || {
            let new_folder = !dir.exists();
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&payload)?;
            file.sync_data()?;
            std::fs::rename(&temp, &path)?;
            sync_folder(&dir)?;
            if new_folder {
                sync_folder(&root)?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The batches that have a folder in the spool.
    pub async fn batches(&self) -> std::io::Result<Vec<BatchId>> {
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut batches = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|name| name.strip_prefix("batch-"))
                .and_then(|id| id.parse().ok())
                .map(BatchId);
            if let Some(id) = id {
                batches.push(id);
            }
        }
        batches.sort_unstable();
        Ok(batches)
    }

    /// Reads a chunk back, to publish it again.
    pub async fn read(&self, batch_id: BatchId, seq: ChunkSeq) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.chunk_path(batch_id, seq)).await
    }

    /// Checks that a file can be created, written, synced and removed in the spool.
    pub async fn is_writable(&self) -> bool {
        let probe = self.dir.join(".writable");
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(&probe)?.sync_data()?;
            std::fs::remove_file(&probe)
        })
        .await
        .is_ok_and(|written| written.is_ok())
    }

    /// Removes every chunk of a batch that is final.
    pub async fn remove_batch(&self, batch_id: BatchId) {
        match tokio::fs::remove_dir_all(self.batch_dir(batch_id)).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%batch_id, %error, "cannot remove spooled chunks"),
        }
    }
}

/// Makes a folder's entries durable (a rename is durable only once its folder is synced).
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
