//! Making packs durable: the background fdatasync of packs that large records were just
//! appended to, and the sticky record of an fsync that failed.

use super::{lock, Result, StoreError};
use std::fs::File;
use std::sync::{mpsc, Arc, Mutex};

/// The first fsync of a pack that failed, sticky for the process's lifetime: Linux reports a
/// writeback error to one fsync only (and may drop the pages it could not write), so no later
/// fsync's success may be taken for the durability of what was written before it. A restart
/// walks the packs again and keeps what is really there.
#[derive(Clone, Default)]
pub(super) struct FsyncFailure(Arc<Mutex<Option<String>>>);

impl FsyncFailure {
    /// Runs an fsync, remembering its failure.
    pub(super) fn sync(&self, file: &File) -> Result<()> {
        file.sync_data().map_err(|e| {
            lock(&self.0).get_or_insert_with(|| e.to_string());
            StoreError::FsyncFailed(format!("an fsync of a pack failed: {e}"))
        })
    }

    /// Err once any fsync has failed.
    pub(super) fn check(&self) -> Result<()> {
        match &*lock(&self.0) {
            None => Ok(()),
            Some(e) => Err(StoreError::FsyncFailed(format!(
                "an fsync of the packs failed ({e}): nothing more is acknowledged until a \
                 restart recovers what the packs really hold"
            ))),
        }
    }
}

/// A thread that fdatasyncs the packs a large record was just appended to, while the rest of
/// the instance arrives. A virtual disk's flush costs time in proportion to what it flushes,
/// so a commit that follows finds little left to flush: its fsync, which a C-STORE-RSP waits
/// for, takes a fraction of what flushing the whole instance at once would.
pub(super) struct EarlySync {
    files: Option<mpsc::Sender<Arc<File>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EarlySync {
    pub(super) fn start(failure: FsyncFailure) -> Result<EarlySync> {
        let (sender, files) = mpsc::channel::<Arc<File>>();
        let thread = std::thread::Builder::new()
            .name("pack-early-sync".into())
            .spawn(move || {
                while let Ok(first) = files.recv() {
                    let mut batch = vec![first];
                    for file in files.try_iter() {
                        if !batch.iter().any(|f| Arc::ptr_eq(f, &file)) {
                            batch.push(file);
                        }
                    }
                    for file in batch {
                        // A failure is the commit's to report: it checks before answering.
                        let _ = failure.sync(&file);
                    }
                }
            })?;
        Ok(EarlySync {
            files: Some(sender),
            thread: Some(thread),
        })
    }

    pub(super) fn request(&self, file: &Arc<File>) {
        // The thread is gone only if it panicked: the commit's fsync then does all the work.
        if let Some(files) = &self.files {
            let _ = files.send(file.clone());
        }
    }
}

impl Drop for EarlySync {
    /// Ends the thread and waits for it: the packs it holds are closed (and their locks
    /// released) when the store is, so that the archive can be opened again at once.
    fn drop(&mut self) {
        drop(self.files.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
