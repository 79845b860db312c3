//! The background fdatasync of packs that large records were just appended to.

use super::lock;
use std::fs::File;
use std::io;
use std::sync::{mpsc, Arc, Mutex};

/// A thread that fdatasyncs the packs a large record was just appended to, while the rest of
/// the instance arrives. A virtual disk's flush costs time in proportion to what it flushes,
/// so a commit that follows finds little left to flush: its fsync, which a C-STORE-RSP waits
/// for, takes a fraction of what flushing the whole instance at once would.
pub(super) struct EarlySync {
    files: mpsc::Sender<Arc<File>>,
    /// The first failure, sticky: Linux reports a writeback error to one fsync only, so a
    /// commit must not take the next fsync's success for durability.
    failed: Arc<Mutex<Option<String>>>,
}

impl EarlySync {
    pub(super) fn start() -> io::Result<EarlySync> {
        let (sender, files) = mpsc::channel::<Arc<File>>();
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let failure = failed.clone();
        std::thread::Builder::new()
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
                        if let Err(e) = file.sync_data() {
                            lock(&failure).get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            })?;
        Ok(EarlySync {
            files: sender,
            failed,
        })
    }

    pub(super) fn request(&self, file: &Arc<File>) {
        // The thread is gone only if it panicked: the commit's fsync then does all the work.
        let _ = self.files.send(file.clone());
    }

    pub(super) fn check(&self) -> io::Result<()> {
        match &*lock(&self.failed) {
            None => Ok(()),
            Some(e) => Err(io::Error::other(format!(
                "an fsync of the packs failed ({e}); restart to recover what was acknowledged"
            ))),
        }
    }
}
