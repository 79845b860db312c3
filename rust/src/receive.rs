//! The one receive path of a C-STORE data set, whoever's association it arrives on: a peer's,
//! served by the listener, or ours, as a sub-operation of a C-GET we asked for.
//!
//! A data set is streamed from its PDVs into the store behind the File Meta a received
//! instance gets, checked against what the request named (`identity`), made durable in the
//! pack log by the one commit path (`commit::Journal`: a group commit, one fsync for every
//! record waiting) and only then acknowledged; the index's applier takes it from the
//! journal's backlog, in log order, so that what was acknowledged is found.

use crate::cas::{self, Ingested, InstanceWriter};
use crate::commit::{Journal, Write};
use crate::dimse::{self, Implementation};
use crate::identity::{self, Identity};
use crate::scan::{FeedError, ScanOptions};
use crate::status::{CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH, OUT_OF_RESOURCES};
use std::fmt;
use std::sync::Arc;

/// An instance received in full, to be made durable and indexed.
pub struct Received {
    pub ingested: Ingested,
    /// Who sent it: `AE@address`.
    pub source: String,
    /// When it was received, UTC, as the index records it (`2026-11-29T19:14:34.123456Z`).
    pub received_at: String,
    /// Its manifest and annotations as the log records them.
    encoded_manifest: Vec<u8>,
    annotations: Vec<u8>,
}

impl Received {
    /// `replace`: received again with other bytes, it replaces the instance stored
    /// (`[storage] on_duplicate = "replace"`); recorded in its manifest record.
    pub fn new(ingested: Ingested, sender: &Sender, replace: bool) -> Received {
        let source = format!("{}@{}", sender.ae, sender.address);
        let received_at = cas::utc_timestamp(std::time::SystemTime::now());
        Received {
            encoded_manifest: ingested.manifest.encode(),
            annotations: cas::annotations(&received_at, &source, replace),
            ingested,
            source,
            received_at,
        }
    }

    pub fn encoded_manifest(&self) -> &[u8] {
        &self.encoded_manifest
    }

    pub fn annotations(&self) -> &[u8] {
        &self.annotations
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

/// Where received data sets go: the archive's journal (its store, its one commit path) and
/// the File Meta they are given.
pub struct Receiver {
    journal: Arc<Journal>,
    implementation: Implementation,
    /// An instance received again with other bytes replaces the one stored (`[storage]
    /// on_duplicate = "replace"`), else the first is kept; recorded in its manifest record.
    replace_duplicates: bool,
}

impl Receiver {
    pub fn new(
        journal: Arc<Journal>,
        implementation: Implementation,
        replace_duplicates: bool,
    ) -> Receiver {
        Receiver {
            journal,
            implementation,
            replace_duplicates,
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
        let store = self.journal.store();
        store.check_space().map_err(|e| Refused {
            status: OUT_OF_RESOURCES,
            why: e.to_string(),
        })?;
        let mut writer = store.writer(ScanOptions {
            wanted: store.wanted().to_vec(),
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
    /// Ok once it is durable in the pack log (and indexed, when the journal acknowledges
    /// only what is: `Journal::acknowledge_indexed`); its blobs, if refused, are referenced by
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
        let received = Received::new(ingested, sender, self.replace_duplicates);
        let batch = self
            .journal
            .commit(Write::Received(Box::new(received)))
            .map_err(|why| Refused {
                status: OUT_OF_RESOURCES,
                why: format!("commit failed: {why}"),
            })?;
        self.journal.settle(batch).map_err(|why| Refused {
            status: OUT_OF_RESOURCES,
            why: format!("not indexed yet (in the log, replayed later): {why}"),
        })
    }
}
