//! The one commit path: writes submitted together share one commit, every writer's records
//! (instances, tombstones) reach the pack log and the applier's backlog in one order, and a
//! write that cannot be made durable is never reported committed.

mod common;

use common::{instance, open};
use dicomvault_native::cas::{HistoryKind, Storage, Store, StoreConfig};
use dicomvault_native::commit::{Journal, Logged, Write};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread;

/// An instance's manifest, its blobs in the store.
fn manifest(store: &Store, seed: u8) -> Vec<u8> {
    let storage = Storage::from(store.clone());
    let mut writer = storage.writer(storage.file_options());
    let sop = format!("1.2.3.{seed}");
    writer.write(&instance(&sop, "DOE^JANE", 1, seed)).unwrap();
    writer.finish().unwrap().manifest.encode()
}

fn prepared(manifest: Vec<u8>) -> Write {
    Write::Prepared {
        manifest,
        annotations: b"note".to_vec(),
    }
}

/// Everything the applier takes until `count` writes: (pack, end, ticket) in its order.
fn take(journal: &Journal, count: usize) -> (u64, Vec<(u32, u64, u64)>) {
    let mut taken = Vec::new();
    let mut through = 0;
    while taken.len() < count {
        let (t, items) = journal.backlog().take().unwrap();
        through = t;
        taken.extend(
            items
                .into_iter()
                .map(|((pack, end), Logged { ticket, .. })| (pack, end, ticket)),
        );
        journal.backlog().applied(t);
    }
    (through, taken)
}

#[test]
fn writes_submitted_together_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let journal = Journal::new(store.clone());
    let tickets: Vec<u64> = (0..10)
        .map(|seed| journal.submit(prepared(manifest(&store, seed))))
        .collect();
    // The last waiter commits all ten: one append to the log, one fsync.
    journal.wait(tickets[9]).unwrap();
    for &ticket in &tickets[..9] {
        journal.wait(ticket).unwrap();
    }
    let (through, taken) = take(&journal, 10);
    assert_eq!(through, 1, "one commit for the ten writes");
    assert_eq!(taken.iter().map(|t| t.2).collect::<Vec<_>>(), tickets);
}

#[test]
fn every_writers_records_reach_the_log_and_the_applier_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let journal = Arc::new(Journal::new(store.clone()));
    let manifests: Vec<Vec<u8>> = (0..40).map(|seed| manifest(&store, seed)).collect();
    let writers: Vec<_> = manifests
        .chunks(5)
        .map(|chunk| {
            let (journal, chunk) = (journal.clone(), chunk.to_vec());
            thread::spawn(move || {
                for (i, m) in chunk.into_iter().enumerate() {
                    if i == 4 {
                        // A deletion among the instances: a tombstone record.
                        journal
                            .commit(Write::Tombstone {
                                manifest: m,
                                key: "9.9".into(),
                            })
                            .unwrap();
                    } else {
                        journal.commit(prepared(m)).unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let (_, taken) = take(&journal, 40);
    let history = store.history(&HashMap::new(), false).unwrap();
    // The applier's order is the log's, record for record, and each is where the log has it.
    assert_eq!(
        taken.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
        history.iter().map(|e| (e.pack, e.end)).collect::<Vec<_>>()
    );
    let tombstones = history
        .iter()
        .filter(|e| matches!(&e.kind, HistoryKind::Tombstone { key } if key == "9.9"))
        .count();
    assert_eq!(tombstones, 8);
    let mut tickets: Vec<u64> = taken.iter().map(|t| t.2).collect();
    tickets.sort_unstable();
    assert_eq!(tickets, (0..40).collect::<Vec<_>>());
}

#[test]
fn a_write_that_cannot_be_made_durable_is_never_reported_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let journal = Journal::new(store.clone());
    journal
        .backlog()
        .refuse(Some("the index map is full".into()));
    let why = journal.commit(prepared(manifest(&store, 1))).unwrap_err();
    assert!(why.contains("the index map is full"), "{why}");
    assert!(store.history(&HashMap::new(), false).unwrap().is_empty());
    assert!(journal.wait(12345).is_err(), "an unknown ticket");
    journal.backlog().refuse(None);
    // Queued and never waited for: committed when the journal closes, then no more.
    journal.submit(prepared(manifest(&store, 2)));
    journal.close();
    assert_eq!(store.history(&HashMap::new(), false).unwrap().len(), 1);
    assert!(journal.commit(prepared(manifest(&store, 3))).is_err());
}
