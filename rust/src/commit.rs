//! The one commit path into the pack log. Every writer's records — instances received on an
//! association (a peer's C-STORE on the listener, or ours during a C-GET), instances a writer
//! in Python prepared (import, STOW-RS, uploads, DICOMweb migration) and deletions' tombstones
//! — are appended by one group commit (one fsync for every record waiting) and queued, in log
//! order, in the `Backlog` the index's applier takes them from.
//!
//! Group commit needs no committer thread: a writer waiting for its ticket commits everything
//! waiting (its own record among them) when nobody else is, while the others wait for their
//! outcome; arrivals during a commit form the next group.

use crate::backlog::{Backlog, Position};
use crate::cas::{LogRecord, Storage};
use crate::receive::Received;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// At most this many records share one commit.
const MAX_BATCH: usize = 256;

/// How long an acknowledgement waits for the index (`Journal::settle`) before the instance is
/// refused instead (it stays in the log and is indexed later): within the 30 s DIMSE timeout
/// pynetdicom's SCUs default to, so a peer hears a status rather than giving up.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// A record for the pack log.
pub enum Write {
    /// An instance received on an association: the applier indexes it from its scan.
    Received(Box<Received>),
    /// An instance a writer in Python prepared (its manifest and annotations): the writer
    /// holds its index entry and waits for the index's outcome.
    Prepared {
        manifest: Vec<u8>,
        annotations: Vec<u8>,
    },
    /// The deletion of the instance indexed under `key`, whose manifest this is.
    Tombstone { manifest: Vec<u8>, key: String },
}

impl Write {
    fn record(&self) -> LogRecord<'_> {
        match self {
            Write::Received(r) => LogRecord::Manifest {
                manifest: r.encoded_manifest(),
                annotations: r.annotations(),
            },
            Write::Prepared {
                manifest,
                annotations,
            } => LogRecord::Manifest {
                manifest,
                annotations,
            },
            Write::Tombstone { manifest, key } => LogRecord::Tombstone { manifest, key },
        }
    }
}

/// A write in the log, and the ticket its writer waited on.
pub struct Logged {
    pub ticket: u64,
    pub write: Write,
}

/// The pack log's writers meet here: `submit` and `wait` (or `commit`, both), then the
/// backlog for the applier.
pub struct Journal {
    store: Storage,
    backlog: Backlog<Logged>,
    queue: Mutex<Queue>,
    done: Condvar,
    /// Received instances are acknowledged only once indexed (see `settle`).
    acknowledge_indexed: AtomicBool,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Logged>,
    /// Each committed ticket's outcome: its batch in the backlog, or Err(why) when the batch
    /// could not be made durable.
    results: HashMap<u64, Result<u64, String>>,
    leading: bool,
    next_ticket: u64,
}

impl Journal {
    pub fn new(store: impl Into<Storage>) -> Journal {
        Journal {
            store: store.into(),
            backlog: Backlog::default(),
            queue: Mutex::default(),
            done: Condvar::new(),
            acknowledge_indexed: AtomicBool::new(false),
        }
    }

    /// Whether a received instance is acknowledged only once the index holds it, not as soon
    /// as it is durable in the log: for an index other nodes read (PostgreSQL), so that what
    /// one node acknowledged is found on every node at once. A node's own reads wait for
    /// what it acknowledged in any case (`Backlog::barrier`).
    pub fn acknowledge_indexed(&self, on: bool) {
        self.acknowledge_indexed.store(on, Ordering::Relaxed);
    }

    /// Returns once `batch` (what `commit` returned) is indexed, when acknowledgements wait
    /// for that (`acknowledge_indexed`); Err(why) if the index cannot apply it now, or gave
    /// it up — it is in the log, replayed later, but must not be acknowledged yet.
    pub fn settle(&self, batch: u64) -> Result<(), String> {
        if self.acknowledge_indexed.load(Ordering::Relaxed) {
            self.backlog.indexed(batch, SETTLE_LIMIT)?;
        }
        Ok(())
    }

    pub fn store(&self) -> &Storage {
        &self.store
    }

    /// What is durable in the log and not yet applied by the index.
    pub fn backlog(&self) -> &Backlog<Logged> {
        &self.backlog
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `write` for the next group commit; `wait` with the ticket returned.
    pub fn submit(&self, write: Write) -> u64 {
        let mut queue = self.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push(Logged { ticket, write });
        ticket
    }

    /// Returns once the write of `ticket` is durable in the log and queued for the applier
    /// (with its batch, for `settle`), or Err(why) if it could not be made durable; commits what is waiting (up to a batch
    /// at a time) when nobody else is.
    pub fn wait(&self, ticket: u64) -> Result<u64, String> {
        let mut queue = self.lock();
        loop {
            if let Some(outcome) = queue.results.remove(&ticket) {
                return outcome;
            }
            if queue.leading {
                queue = self.done.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if !queue.waiting.iter().any(|l| l.ticket == ticket) {
                return Err(format!("no write holds ticket {ticket}"));
            }
            queue = self.lead(queue);
        }
    }

    /// `submit` and `wait`.
    pub fn commit(&self, write: Write) -> Result<u64, String> {
        let ticket = self.submit(write);
        self.wait(ticket)
    }

    /// Commits one batch of what is waiting, the queue unlocked meanwhile.
    fn lead<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        queue.leading = true;
        let take = queue.waiting.len().min(MAX_BATCH);
        let batch: Vec<Logged> = queue.waiting.drain(..take).collect();
        drop(queue);
        let tickets: Vec<u64> = batch.iter().map(|l| l.ticket).collect();
        let outcome = self.persist(batch).map_err(|e| {
            format!(
                "the commit of {} records to the pack log failed: {e}",
                tickets.len()
            )
        });
        let mut queue = self.lock();
        queue
            .results
            .extend(tickets.into_iter().map(|t| (t, outcome.clone())));
        queue.leading = false;
        self.done.notify_all();
        queue
    }

    /// Appends the records of `batch` to the pack log, durably, and leaves them for the
    /// index's applier.
    fn persist(&self, batch: Vec<Logged>) -> io::Result<u64> {
        self.backlog
            .append(batch, |batch| -> io::Result<Vec<Position>> {
                let records: Vec<LogRecord<'_>> = batch.iter().map(|l| l.write.record()).collect();
                Ok(self.store.append_log(&records)?)
            })
    }

    /// Commits what is still waiting (its writers learn the outcome from `wait`), then takes
    /// no more: `Backlog::take` returns None once the applier has the rest.
    pub fn close(&self) {
        let mut queue = self.lock();
        loop {
            if queue.leading {
                queue = self.done.wait(queue).unwrap_or_else(|p| p.into_inner());
            } else if queue.waiting.is_empty() {
                break;
            } else {
                queue = self.lead(queue);
            }
        }
        drop(queue);
        self.backlog.close();
    }
}
