//! The backlog keeps the log's order for the applier, makes readers wait for what was
//! acknowledged before them, and refuses writers while the index cannot apply what they
//! would acknowledge.

use dicomvault_native::backlog::{Backlog, Position};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Persists by handing out increasing offsets in pack 1, as the pack log does.
fn persist(next: &AtomicU64) -> impl FnOnce(&[u32]) -> io::Result<Vec<Position>> + '_ {
    move |items| {
        Ok(items
            .iter()
            .map(|_| (1, next.fetch_add(1, Ordering::SeqCst) + 1))
            .collect())
    }
}

/// Runs `call` on its own thread; asserts (`what` says why) that it is still blocked a while
/// later.
fn blocked(what: &str, call: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    let handle = thread::spawn(call);
    thread::sleep(Duration::from_millis(100));
    assert!(!handle.is_finished(), "{what}");
    handle
}

#[test]
fn the_applier_takes_batches_in_the_order_writers_appended_them() {
    let backlog = Arc::new(Backlog::<u32>::default());
    let offsets = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (backlog, offsets) = (backlog.clone(), offsets.clone());
            thread::spawn(move || {
                for i in 0..50 {
                    backlog
                        .append(vec![w * 1000 + i, w * 1000 + i], persist(&offsets))
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    while seen.len() < 400 {
        let (through, taken) = backlog.take().unwrap();
        seen.extend(taken.iter().map(|(position, _)| position.1));
        backlog.applied(through);
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(seen, (1..=400).collect::<Vec<u64>>());
}

#[test]
fn a_barrier_waits_for_what_was_appended_before_it_only() {
    let backlog = Arc::new(Backlog::<u32>::default());
    let offsets = AtomicU64::new(0);
    backlog.append(vec![1], persist(&offsets)).unwrap();
    let reader = {
        let backlog = backlog.clone();
        blocked("returned before the append was applied", move || {
            backlog.barrier().unwrap()
        })
    };
    let (through, _) = backlog.take().unwrap();
    backlog.append(vec![2], persist(&offsets)).unwrap(); // after the barrier began
    backlog.applied(through);
    reader.join().unwrap();
}

#[test]
fn a_failed_persist_queues_nothing_and_a_closed_backlog_refuses_appends() {
    let backlog = Backlog::<u32>::default();
    let failed = backlog.append(vec![1], |_| Err(io::Error::other("disk full")));
    assert!(failed.is_err());
    backlog.barrier().unwrap(); // nothing was acknowledged: nothing to wait for
    backlog.close();
    assert!(backlog.take().is_none());
    let offsets = AtomicU64::new(0);
    assert!(backlog.append(vec![2], persist(&offsets)).is_err());
}

#[test]
fn a_stalled_applier_refuses_writers_and_tells_readers_until_it_applies() {
    let backlog = Arc::new(Backlog::<u32>::default());
    let offsets = Arc::new(AtomicU64::new(0));
    backlog.append(vec![1], persist(&offsets)).unwrap();
    let reader = {
        let backlog = backlog.clone();
        blocked("returned before the append was applied", move || {
            assert_eq!(backlog.barrier(), Err("disk failed".to_string()));
        })
    };
    let (through, _) = backlog.take().unwrap();
    backlog.stalled("disk failed".into());
    reader.join().unwrap();
    let refused = backlog.append(vec![2], persist(&offsets)).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::StorageFull);
    assert!(refused.to_string().contains("disk failed"), "{refused}");
    // The retry succeeds: writers and readers go on.
    backlog.applied(through);
    backlog.barrier().unwrap();
    backlog.append(vec![3], persist(&offsets)).unwrap();
    assert_eq!(backlog.take().unwrap().1, vec![((1, 2), 3)]);
}

#[test]
fn an_index_without_room_refuses_writers_before_they_acknowledge() {
    let backlog = Backlog::<u32>::default();
    let offsets = AtomicU64::new(0);
    backlog.refuse(Some("the index map is nearly full".into()));
    let persisted = std::cell::Cell::new(false);
    let refused = backlog.append(vec![1], |items| {
        persisted.set(true);
        persist(&offsets)(items)
    });
    assert!(refused.is_err());
    assert!(!persisted.get(), "nothing was written to the log");
    backlog.refuse(None);
    backlog.append(vec![2], persist(&offsets)).unwrap();
}

#[test]
fn a_writer_waiting_for_its_batch_to_be_indexed_gives_up_after_its_limit() {
    let backlog = Backlog::<u32>::default();
    let offsets = AtomicU64::new(0);
    let limit = Duration::from_millis(200);
    let batch = backlog.append(vec![1], persist(&offsets)).unwrap();
    let started = std::time::Instant::now();
    let waited = backlog.indexed(batch, limit).unwrap_err();
    assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
    assert!(
        waited.contains("has not applied it within 0.2 s"),
        "{waited}"
    );
    let (through, _) = backlog.take().unwrap();
    backlog.applied(through);
    backlog.indexed(batch, limit).unwrap();
}

#[test]
fn what_the_applier_gave_up_is_not_indexed_for_its_writers_but_readers_go_on() {
    let backlog = Backlog::<u32>::default();
    let offsets = AtomicU64::new(0);
    let limit = Duration::from_secs(5);
    let given_up = backlog.append(vec![1], persist(&offsets)).unwrap();
    let (through, _) = backlog.take().unwrap();
    backlog.given_up(through, "cannot be indexed".into());
    backlog.barrier().unwrap();
    // A later batch, applied, is indexed for its writer; the given-up one's writer, asking
    // only now, is still told.
    let applied = backlog.append(vec![2], persist(&offsets)).unwrap();
    let (through, _) = backlog.take().unwrap();
    backlog.applied(through);
    backlog.indexed(applied, limit).unwrap();
    assert_eq!(
        backlog.indexed(given_up, limit),
        Err("cannot be indexed".to_string())
    );
}
