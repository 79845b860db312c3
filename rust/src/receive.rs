//! The one receive path of a C-STORE data set, whoever's association it arrives on: a peer's,
//! served by the listener, or ours, as a sub-operation of a C-GET we asked for.
//!
//! A data set is streamed from its PDVs into the store behind the File Meta a received
//! instance gets, checked against what the request named (`identity`), made durable in the
//! pack log by a group commit (one fsync for every instance waiting) and only then
//! acknowledged; the index's applier takes it from the `Backlog`, in log order, so that what
//! was acknowledged is found.

use crate::backlog::Backlog;
use crate::cas::{self, Ingested, InstanceWriter, Store};
use crate::dimse::{self, Implementation};
use crate::identity::{self, Identity};
use crate::scan::{FeedError, ScanOptions};
use crate::status::{CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH, OUT_OF_RESOURCES};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// At most this many instances share one commit.
const MAX_BATCH: usize = 256;

/// An instance received in full, to be made durable and indexed.
pub struct Received {
    pub ingested: Ingested,
    pub calling_ae: String,
    pub address: String,
    /// When it was received, UTC, as the index records it (`2026-11-29T19:14:34.123456Z`).
    pub received_at: String,
}

impl Received {
    /// Who sent it: `AE@address`.
    pub fn source(&self) -> String {
        format!("{}@{}", self.calling_ae, self.address)
    }
}

/// Who a data set comes from: the AE title that sent the C-STORE-RQ and its address.
#[derive(Debug, Clone)]
pub struct Sender {
    pub ae: String,
    pub address: String,
}

/// Why a data set was not stored, and the C-STORE status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub why: String,
}

impl Refused {
    /// A data set that could not be read or written as it arrived.
    pub fn from_feed(error: &FeedError) -> Refused {
        let (status, what) = match error {
            FeedError::Scan(_) => (CANNOT_UNDERSTAND, "cannot understand the data set"),
            FeedError::Io(_) => (OUT_OF_RESOURCES, "storage failed"),
        };
        Refused {
            status,
            why: format!("{what}: {error}"),
        }
    }

    /// Whether the sender is at fault (the data set), rather than the archive.
    pub fn is_the_senders(&self) -> bool {
        self.status == DATA_SET_DOES_NOT_MATCH
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for Refused {}

/// Where received data sets go: the store, the backlog the index applies, the File Meta
/// they are given, and the group commit the association threads share.
pub struct Receiver {
    store: Store,
    backlog: Arc<Backlog<Received>>,
    implementation: Implementation,
    /// An instance received again with other bytes replaces the one stored (`[storage]
    /// on_duplicate = "replace"`), else the first is kept; recorded in its manifest record.
    replace_duplicates: bool,
    commits: Commits,
}

impl Receiver {
    pub fn new(
        store: Store,
        backlog: Arc<Backlog<Received>>,
        implementation: Implementation,
        replace_duplicates: bool,
    ) -> Receiver {
        Receiver {
            store,
            backlog,
            implementation,
            replace_duplicates,
            commits: Commits::default(),
        }
    }

    /// Starts receiving the data set of a C-STORE-RQ for `sop_class`/`sop_instance` in
    /// `transfer_syntax` from `calling_ae`; refused below the free-space reserve.
    pub fn begin(
        &self,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        calling_ae: &str,
    ) -> Result<InstanceWriter, Refused> {
        self.store.check_space().map_err(|e| Refused {
            status: OUT_OF_RESOURCES,
            why: e.to_string(),
        })?;
        let mut writer = self.store.writer(ScanOptions {
            wanted: self.store.config().wanted.clone(),
            transfer_syntax: None,
            allow_truncated: false,
        });
        let meta = dimse::file_meta(
            sop_class,
            sop_instance,
            transfer_syntax,
            calling_ae,
            &self.implementation,
        );
        writer.write(&meta).map_err(|e| Refused::from_feed(&e))?;
        Ok(writer)
    }

    /// The data set has arrived whole: it must be the instance the request named
    /// (`requested`: SOP Class and Instance UIDs) and pass `check`; then it is committed.
    /// Ok once it is durable in the pack log; its blobs, if refused, are referenced by
    /// nothing (gc reclaims them).
    pub fn finish(
        &self,
        writer: InstanceWriter,
        requested: (&str, &str),
        check: impl FnOnce(&Identity) -> Result<(), String>,
        sender: &Sender,
    ) -> Result<(), Refused> {
        let ingested = writer.finish().map_err(|e| Refused::from_feed(&e))?;
        let mismatch = |why: String| Refused {
            status: DATA_SET_DOES_NOT_MATCH,
            why,
        };
        let identity = identity::identity(&ingested.summary, Some(requested))
            .map_err(|e| mismatch(e.to_string()))?;
        check(&identity).map_err(mismatch)?;
        let received = Received {
            ingested,
            calling_ae: sender.ae.clone(),
            address: sender.address.clone(),
            received_at: cas::utc_timestamp(std::time::SystemTime::now()),
        };
        self.commits
            .commit(received, |batch| self.persist(batch))
            .map_err(|why| Refused {
                status: OUT_OF_RESOURCES,
                why: format!("commit failed: {why}"),
            })
    }

    /// Appends the manifest records of `batch` to the pack log, durably, and leaves the batch
    /// for the index's applier.
    fn persist(&self, batch: Vec<Received>) -> io::Result<()> {
        self.backlog.append(batch, |batch| {
            let records: Vec<(Vec<u8>, Vec<u8>)> = batch
                .iter()
                .map(|r| {
                    let notes =
                        cas::annotations(&r.received_at, &r.source(), self.replace_duplicates);
                    (r.ingested.manifest.encode(), notes)
                })
                .collect();
            Ok(self.store.persist(&records)?)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Group commit without a committer thread: the first thread to arrive appends everything
/// waiting (its own instance among them) to the pack log, one fsync for all, while the others
/// wait for their outcome; arrivals during a commit form the next group.
#[derive(Default)]
struct Commits {
    queue: Mutex<CommitQueue>,
    done: Condvar,
}

#[derive(Default)]
struct CommitQueue {
    waiting: Vec<(u64, Received)>,
    /// Each ticket's outcome: Err(why) when its batch could not be made durable.
    results: HashMap<u64, Result<(), String>>,
    leading: bool,
    next_ticket: u64,
}

impl Commits {
    fn commit(
        &self,
        received: Received,
        persist: impl Fn(Vec<Received>) -> io::Result<()>,
    ) -> Result<(), String> {
        let mut queue = lock(&self.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, received));
        loop {
            if let Some(outcome) = queue.results.remove(&ticket) {
                return outcome;
            }
            if queue.leading {
                queue = self.done.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            queue.leading = true;
            let take = queue.waiting.len().min(MAX_BATCH);
            let (tickets, batch): (Vec<u64>, Vec<Received>) = queue.waiting.drain(..take).unzip();
            drop(queue);
            let count = tickets.len();
            let outcome = persist(batch)
                .map_err(|e| format!("the commit of {count} received instances failed: {e}"));
            queue = lock(&self.queue);
            queue
                .results
                .extend(tickets.into_iter().map(|t| (t, outcome.clone())));
            queue.leading = false;
            self.done.notify_all();
        }
    }
}
