//! The Rust SCU against the Rust listener, each with a store of its own: C-FIND answers
//! decoded, C-GET sub-operations streamed through the receive path into the second store
//! byte for byte (small PDUs, so that every data set arrives in many PDVs), instances of
//! another study than asked refused with 0xA900, and nothing acknowledged before it is
//! durable in the backlog; a silent peer, plain or TLS, fails the association within the ACSE
//! timeout.

mod common;

use common::{open, pattern, Builder};
use dicomvault_native::cas::{ReadInstances, Storage, Store, StoreConfig};
use dicomvault_native::commit::{Journal, Write};
use dicomvault_native::dimse::Implementation;
use dicomvault_native::manifest::Manifest;
use dicomvault_native::pdu::ProposedContext;
use dicomvault_native::receive::Receiver;
use dicomvault_native::scp::{
    self, Host, KnownAe, ListenerConfig, LogLevel, Matches, Policy, QueryRequest, Selected,
    SubOperationStatuses,
};
use dicomvault_native::scu::{self, identifier, Association, Key, Peer};
use std::sync::Arc;
use std::time::Duration;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
const GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";
const IMPLICIT: &str = "1.2.840.10008.1.2";
const STUDY: &str = "1.2.3.4";
const STUDY_UID: u32 = 0x0020_000D;

fn implementation() -> Implementation {
    Implementation {
        class_uid: "1.2.3.999".into(),
        version_name: "TEST".into(),
    }
}

/// A CT instance of `STUDY` (Part 10, Explicit VR Little Endian).
fn ct(sop: &str, seed: u8) -> Vec<u8> {
    let mut b = Builder::part10(EXPLICIT);
    b.text(0x0008_0016, b"UI", CT)
        .text(0x0008_0018, b"UI", sop)
        .text(0x0010_0010, b"PN", "SCU^TEST")
        .text(STUDY_UID, b"UI", STUDY)
        .text(0x0020_000E, b"UI", "1.2.3.4.5")
        .image_header(64, 64, 1)
        .native_pixels(&pattern(64 * 64 * 2, seed));
    b.bytes
}

/// The listener's side: one study, its instances in `store`.
struct Source {
    instances: Vec<Selected>,
}

impl Host for Source {
    fn log(&self, _: Vec<(LogLevel, String)>) {}

    fn select(&self, _: QueryRequest) -> Result<Vec<Selected>, u16> {
        Ok(self
            .instances
            .iter()
            .map(|s| Selected {
                sop_class_uid: s.sop_class_uid.clone(),
                sop_instance_uid: s.sop_instance_uid.clone(),
                transfer_syntax: s.transfer_syntax.clone(),
                dataset_offset: s.dataset_offset,
                manifest: s.manifest.clone(),
            })
            .collect())
    }

    fn find(&self, request: QueryRequest) -> Result<Matches, u16> {
        let answer = identifier::encode(
            "STUDY",
            &[Key {
                tag: STUDY_UID,
                vr: *b"UI",
                value: STUDY.into(),
            }],
            &request.transfer_syntax,
        );
        Ok(Box::new(std::iter::once(Ok(answer))))
    }

    fn move_to(
        &self,
        _: QueryRequest,
        _: &str,
        _: std::os::fd::RawFd,
    ) -> Result<(Vec<String>, SubOperationStatuses), u16> {
        Err(0xC000)
    }

    fn commit(&self, _: QueryRequest, _: Option<u16>) -> u16 {
        0xC000
    }

    fn transcode(&self, _: &Selected, _: &[String]) -> Result<(String, Vec<u8>), String> {
        Err("not here".into())
    }
}

fn store_in(store: &Store, data: &[u8]) -> Manifest {
    let storage = Storage::from(store.clone());
    let mut writer = storage.writer(storage.file_options());
    writer.write(data).unwrap();
    let ingested = writer.finish().unwrap();
    storage
        .persist(&[(ingested.manifest.encode(), Vec::new())])
        .unwrap();
    ingested.manifest
}

#[test]
fn find_and_get_from_the_listener_through_the_receive_path() {
    let source_dir = tempfile::tempdir().unwrap();
    let source_store = open(source_dir.path(), StoreConfig::default());
    let originals: Vec<(String, Vec<u8>)> = (0..5u8)
        .map(|n| (format!("1.2.3.4.5.{n}"), ct(&format!("1.2.3.4.5.{n}"), n)))
        .collect();
    let instances: Vec<Selected> = originals
        .iter()
        .map(|(sop, data)| {
            let manifest = store_in(&source_store, data);
            Selected {
                sop_class_uid: CT.into(),
                sop_instance_uid: sop.clone(),
                transfer_syntax: EXPLICIT.into(),
                dataset_offset: manifest.dataset_offset,
                manifest,
            }
        })
        .collect::<Vec<Selected>>();
    let offsets: Vec<u64> = instances.iter().map(|s| s.dataset_offset).collect();
    let config = ListenerConfig {
        policy: Policy {
            ae_title: "SOURCE".into(),
            check_called_aet: false,
            always_allow_echo: true,
            always_allow_store: true,
            check_modality_host: false,
            known: Vec::<KnownAe>::new(),
        },
        storage_classes: [CT.to_string()].into(),
        private_classes: false,
        find_classes: [FIND.to_string()].into(),
        move_classes: Default::default(),
        retrieve_classes: [GET.to_string()].into(),
        transfer_syntaxes: vec![EXPLICIT.into()],
        // Small PDUs: every data set crosses in many PDVs.
        max_pdu: 4096,
        max_associations: 4,
        max_associations_per_ae: 4,
        association_timeout: Duration::from_secs(30),
        dimse_timeout: Duration::from_secs(30),
        max_instance_size: 1 << 30,
        implementation: implementation(),
        replace_duplicates: false,
    };
    let mut listener = scp::Listener::start(
        scp::Endpoints {
            plain: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        },
        config,
        Arc::new(Journal::new(source_store.clone())),
        Arc::new(Source { instances }),
    )
    .unwrap();

    let archive_dir = tempfile::tempdir().unwrap();
    let archive = open(archive_dir.path(), StoreConfig::default());
    let journal = Arc::new(Journal::new(archive.clone()));
    let receiver = Receiver::new(journal.clone(), implementation(), false);
    let peer = Peer {
        host: "127.0.0.1".into(),
        port: listener.address().port(),
        called_ae: "SOURCE".into(),
        calling_ae: "ARCHIVE".into(),
        acse_timeout: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        max_pdu: 4096,
        implementation: implementation(),
        tls: None,
    };
    let contexts = [FIND, GET, CT].map(|uid| ProposedContext {
        id: 0,
        abstract_syntax: uid.into(),
        transfer_syntaxes: vec![EXPLICIT.into()],
    });
    let contexts: Vec<ProposedContext> = contexts
        .into_iter()
        .enumerate()
        .map(|(n, c)| ProposedContext {
            id: 2 * n as u8 + 1,
            ..c
        })
        .collect();
    let mut association = Association::open(&peer, &contexts, &[CT.to_string()]).unwrap();

    let wanted = [(STUDY_UID, *b"UI")];
    let found = scu::find(&mut association, FIND, "STUDY", &[], &wanted, None).unwrap();
    assert_eq!(found.status, 0);
    assert_eq!(found.matches, vec![vec![(STUDY_UID, STUDY.to_string())]]);
    // Past its limit a C-FIND is cancelled (PS3.7 9.3.2.3): no more matches than the limit,
    // the final response Cancel (or Success, when it came first), the association usable.
    let limited = scu::find(&mut association, FIND, "STUDY", &[], &wanted, Some(0)).unwrap();
    assert!(limited.matches.is_empty());
    assert!(
        [0xFE00, 0].contains(&limited.status),
        "{:04X}",
        limited.status
    );
    let again = scu::find(&mut association, FIND, "STUDY", &[], &wanted, Some(1)).unwrap();
    assert_eq!(again.matches, found.matches);

    let keys = [Key {
        tag: STUDY_UID,
        vr: *b"UI",
        value: STUDY.into(),
    }];
    // Instances of other studies than those asked for are refused, none stored.
    let refused = scu::get(
        &mut association,
        GET,
        "STUDY",
        &keys,
        &receiver,
        &["9.9".to_string(), "9.8".to_string()],
        false,
    )
    .unwrap();
    assert_eq!((refused.status, refused.counts.failed), (0xA702, 5));
    assert_eq!(refused.refused.len(), 5);
    assert_eq!(refused.failed_uids.len(), 5);
    assert_eq!(refused.stored, 0);

    // As held: an instance sent on a context its class was proposed in with several
    // transfer syntaxes (the sender may have converted it to the one it took) is refused,
    // named with its class; none stored.
    let mut several = contexts.clone();
    several[2].transfer_syntaxes.push(IMPLICIT.into());
    let mut other = Association::open(&peer, &several, &[CT.to_string()]).unwrap();
    let unproposed = scu::get(&mut other, GET, "STUDY", &keys, &receiver, &[], true).unwrap();
    assert_eq!(unproposed.counts.failed, 5);
    assert_eq!(unproposed.unproposed.len(), 5);
    assert!(unproposed.unproposed.iter().all(|(_, class)| class == CT));
    assert!(unproposed.refused.is_empty());
    assert_eq!(unproposed.stored, 0);
    other.release().unwrap();

    let got = scu::get(
        &mut association,
        GET,
        "STUDY",
        &keys,
        &receiver,
        &["9.9".to_string(), STUDY.to_string()],
        true,
    )
    .unwrap();
    assert_eq!((got.status, got.counts.completed, got.stored), (0, 5, 5));
    association.release().unwrap();
    listener.stop();

    // Acknowledged means in the backlog, in order, each data set as the source stored it.
    let (_, received) = journal.backlog().take().unwrap();
    assert_eq!(received.len(), 5);
    for (((_, logged), (sop, original)), offset) in received.iter().zip(&originals).zip(offsets) {
        let Write::Received(r) = &logged.write else {
            panic!("{sop}: not a received instance");
        };
        let manifest = &r.ingested.manifest;
        let data = archive
            .read_instance(manifest, manifest.dataset_offset)
            .unwrap();
        assert_eq!(&data[..], &original[offset as usize..], "{sop}");
        assert!(r.source.starts_with("SOURCE@127.0.0.1"), "{}", r.source);
    }
}

/// A peer that accepts connections and never says a word: neither over plain TCP nor in a
/// TLS handshake does an association wait for it past the ACSE timeout.
#[test]
fn a_silent_peer_fails_the_association_within_the_acse_timeout() {
    let directory = tempfile::tempdir().unwrap();
    let (ca, key) = (
        directory.path().join("ca.pem"),
        directory.path().join("ca.key"),
    );
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=test CA"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let config = dicomvault_native::tls::client_config(&dicomvault_native::tls::ClientFiles {
        ca,
        identity: None,
    })
    .unwrap();

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let acse_timeout = Duration::from_millis(300);
    for tls in [None, Some(config)] {
        let peer = Peer {
            host: "127.0.0.1".into(),
            port,
            called_ae: "SILENT".into(),
            calling_ae: "ARCHIVE".into(),
            acse_timeout,
            timeout: Duration::from_secs(600),
            max_pdu: 4096,
            implementation: implementation(),
            tls: tls.clone(),
        };
        let started = std::time::Instant::now();
        let failed = Association::open(&peer, &[], &[]).err().unwrap();
        let took = started.elapsed();
        assert!(
            took >= acse_timeout && took < acse_timeout * 3,
            "{took:?}: {failed}"
        );
        match (&tls, &failed) {
            (None, scu::ScuError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            (Some(_), scu::ScuError::TlsHandshake(_)) => {
                assert!(
                    failed.to_string().starts_with("TLS handshake failed"),
                    "{failed}"
                )
            }
            _ => panic!("{failed:?}"),
        }
    }
}
