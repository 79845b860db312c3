//! The backlog: records durable in the pack log that the index has not applied yet, in log
//! order.
//!
//! The packs are the archive's log and the index records how far into them it has applied
//! (per pack, an end offset). A writer appends records and acknowledges them once they are
//! durable; the index applies them later, in the order they were appended, so that its marks
//! only ever advance over records it holds. A crash in between loses nothing: whatever lies
//! beyond the marks is replayed from the packs when the archive opens.
//!
//! Three kinds of callers meet here: the writer (`append`, from the one commit path,
//! `commit::Journal`; appends take turns, so that the log order is the backlog's order), the
//! index's applier (`take`, then `applied`), and readers (`barrier`: what was acknowledged
//! before a read is visible to it).
//!
//! An acknowledgement promises that the instance is found. So while the applier cannot apply
//! what it took (`stalled`: a failing disk; it retries) writers are refused and readers that
//! would not see what was acknowledged are told so instead of answering without it; and while
//! the index has no room left for more (`refuse`), writers are refused before acknowledging.

pub use crate::cas::Position;
use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Given-up runs remembered for `Backlog::indexed`: a writer waits at most a few seconds, and
/// the applier gives up rarely (an instance it cannot index at all, or closing).
const GIVEN_UP_KEPT: usize = 64;

pub struct Backlog<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

struct State<T> {
    /// A writer is appending.
    busy: bool,
    closed: bool,
    /// Batches appended, and batches the applier has finished with.
    appended: u64,
    applied: u64,
    pending: Vec<(Position, T)>,
    /// Why the applier cannot apply what it took (it retries until it can).
    stalled: Option<String>,
    /// Why the index cannot take more: appends are refused, nothing is acknowledged.
    refusing: Option<String>,
    /// The latest runs of batches the applier gave up, (applied before, through], and why:
    /// a writer is told even if its batch was given up before it asked.
    given_up: VecDeque<(u64, u64, String)>,
}

impl<T> Default for Backlog<T> {
    fn default() -> Self {
        Backlog {
            state: Mutex::new(State {
                busy: false,
                closed: false,
                appended: 0,
                applied: 0,
                pending: Vec::new(),
                stalled: None,
                refusing: None,
                given_up: VecDeque::new(),
            }),
            changed: Condvar::new(),
        }
    }
}

impl<T> Backlog<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State<T>>) -> MutexGuard<'a, State<T>> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn wait_idle(&self) -> MutexGuard<'_, State<T>> {
        let mut state = self.lock();
        while state.busy {
            state = self.wait(state);
        }
        state
    }

    /// Appends `items` to the log with `persist` (which makes them durable and says where
    /// each ends) and queues them for the applier, as batch number n (from 1) that `indexed`
    /// takes. Writers take turns, so that the queue's order is the log's.
    pub fn append(
        &self,
        items: Vec<T>,
        persist: impl FnOnce(&[T]) -> io::Result<Vec<Position>>,
    ) -> io::Result<u64> {
        let mut state = self.wait_idle();
        if state.closed {
            return Err(io::Error::other("the archive is closing"));
        }
        if let Some(why) = state.stalled.as_ref().or(state.refusing.as_ref()) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the index cannot take more instances now: {why}"),
            ));
        }
        state.busy = true;
        drop(state);
        let persisted = persist(&items);
        let mut state = self.lock();
        state.busy = false;
        let result = persisted.and_then(|positions| {
            if positions.len() != items.len() {
                return Err(io::Error::other("persist returned a position per item"));
            }
            state.pending.extend(positions.into_iter().zip(items));
            state.appended += 1;
            Ok(state.appended)
        });
        self.changed.notify_all();
        result
    }

    /// Everything queued, oldest first, with the count to pass to `applied` once it is in the
    /// index; None once the backlog is closed and empty.
    pub fn take(&self) -> Option<(u64, Vec<(Position, T)>)> {
        let mut state = self.lock();
        while state.pending.is_empty() {
            if state.closed {
                return None;
            }
            state = self.wait(state);
        }
        Some((state.appended, std::mem::take(&mut state.pending)))
    }

    /// The applier is done with what `take` returned (applied, or given up and left to be
    /// replayed at the next open); it is not stalled any more.
    pub fn applied(&self, through: u64) {
        let mut state = self.lock();
        state.applied = state.applied.max(through);
        state.stalled = None;
        self.changed.notify_all();
    }

    /// The applier gave up what `take` returned, for `why`: it is left for the replay at the
    /// next open. Readers go on; `indexed` tells the writers of those batches.
    pub fn given_up(&self, through: u64, why: String) {
        let mut state = self.lock();
        let after = state.applied;
        if state.given_up.len() == GIVEN_UP_KEPT {
            state.given_up.pop_front();
        }
        state.given_up.push_back((after, through, why));
        drop(state);
        self.applied(through);
    }

    /// The applier failed to apply what it took, for `why`, and will try again.
    pub fn stalled(&self, why: String) {
        self.lock().stalled = Some(why);
        self.changed.notify_all();
    }

    /// Refuses appends for `why` (the index has no room left), or accepts them again (None).
    pub fn refuse(&self, why: Option<String>) {
        self.lock().refusing = why;
    }

    /// Returns once everything appended before the call has been applied (or given up);
    /// Err(why) if the applier is stalled before it is.
    pub fn barrier(&self) -> Result<(), String> {
        let target = self.lock().appended;
        self.wait_applied(target, None)
    }

    /// Returns once batch `batch` (as `append` numbered it) is in the index; Err(why) if the
    /// applier is stalled, takes longer than `limit`, or gave it up (left for the replay at
    /// the next open): what must not be acknowledged as found yet.
    pub fn indexed(&self, batch: u64, limit: Duration) -> Result<(), String> {
        self.wait_applied(batch, Some(limit))?;
        let state = self.lock();
        match state
            .given_up
            .iter()
            .find(|(after, through, _)| *after < batch && batch <= *through)
        {
            Some((_, _, why)) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn wait_applied(&self, target: u64, limit: Option<Duration>) -> Result<(), String> {
        let deadline = limit.map(|limit| (Instant::now() + limit, limit));
        let mut state = self.lock();
        while state.applied < target {
            if let Some(why) = &state.stalled {
                return Err(why.clone());
            }
            state = match deadline {
                None => self.wait(state),
                Some((deadline, limit)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!(
                            "the index has not applied it within {} s",
                            limit.as_secs_f32()
                        ));
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        Ok(())
    }

    /// No more appends; `take` returns None once the applier has taken the rest.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}
