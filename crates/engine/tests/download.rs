//! Model download against a fake Hub on 127.0.0.1: cache layout, progress, cancel and resume,
//! dropped connections, server errors, gated repos and corrupt bytes.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use engine::download::{download, ensure_fits, HubSource, Outcome, Progress};
use hf_hub::Cache;
use sha2::{Digest, Sha256};

const REPO: &str = "google/gemma-3n-test";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_SIZE: usize = 3_000_000;

#[derive(Default)]
struct Behaviour {
    /// Close the connection after this many body bytes of the weights, once.
    drop_after: Option<usize>,
    /// Answer the weights with this status.
    status: Option<u16>,
    /// Send other bytes than the listing's checksum promises.
    corrupt: bool,
    /// Answer ranged requests with the whole file (200).
    ignore_range: bool,
    /// The token the repo needs.
    token: Option<String>,
}

struct FakeHub {
    files: Vec<(String, Vec<u8>, bool)>,
    behaviour: Mutex<Behaviour>,
    /// (file, first byte asked for) of every file request.
    requests: Mutex<Vec<(String, u64)>>,
}

impl FakeHub {
    fn start(behaviour: Behaviour) -> (Arc<Self>, String) {
        let weights: Vec<u8> = (0..WEIGHTS_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        let hub = Arc::new(Self {
            files: vec![
                (
                    "config.json".into(),
                    br#"{"model_type":"gemma3n"}"#.to_vec(),
                    false,
                ),
                ("tokenizer.json".into(), b"{}".to_vec(), false),
                (WEIGHTS.into(), weights, true),
                ("README.md".into(), b"# not wanted".to_vec(), false),
            ],
            behaviour: Mutex::new(behaviour),
            requests: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let hub = server.clone();
                std::thread::spawn(move || hub.answer(stream));
            }
        });
        (hub, endpoint)
    }

    fn listing(&self) -> String {
        let siblings: Vec<_> = self
            .files
            .iter()
            .map(|(name, bytes, lfs)| {
                let sha = format!("{:x}", Sha256::digest(bytes));
                if *lfs {
                    serde_json::json!({"rfilename": name, "size": 130,
                        "blobId": "b".repeat(40), "lfs": {"sha256": sha, "size": bytes.len()}})
                } else {
                    serde_json::json!({"rfilename": name, "size": bytes.len(), "blobId": &sha[..40]})
                }
            })
            .collect();
        serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string()
    }

    fn answer(&self, mut stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut range, mut auth) = (0u64, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "range" => {
                    range = value["bytes=".len()..]
                        .trim_end_matches('-')
                        .parse()
                        .unwrap();
                }
                "authorization" => auth = Some(value.trim_start_matches("Bearer ").to_string()),
                _ => {}
            }
        }
        let mut b = self.behaviour.lock().unwrap();
        if b.token.is_some() && auth != b.token {
            return reply(&mut stream, 401, &[], b"");
        }
        if path.starts_with(&format!("/api/models/{REPO}")) {
            return reply(&mut stream, 200, &[], self.listing().as_bytes());
        }
        let prefix = format!("/{REPO}/resolve/{COMMIT}/");
        let Some((name, bytes, _)) = path
            .strip_prefix(&prefix)
            .and_then(|f| self.files.iter().find(|(n, _, _)| n == f))
        else {
            return reply(&mut stream, 404, &[], b"");
        };
        self.requests.lock().unwrap().push((name.clone(), range));
        if name != WEIGHTS {
            return reply(&mut stream, 200, &[], bytes);
        }
        if let Some(status) = b.status {
            return reply(&mut stream, status, &[], b"");
        }
        let mut bytes = bytes.clone();
        if b.corrupt {
            bytes[WEIGHTS_SIZE / 2] ^= 1;
        }
        if b.ignore_range {
            return reply(&mut stream, 200, &[], &bytes);
        }
        let body = &bytes[range as usize..];
        let content_range = format!("bytes {range}-{}/{}", WEIGHTS_SIZE - 1, WEIGHTS_SIZE);
        match b.drop_after.take() {
            Some(n) => {
                // Promise the whole rest, send part of it, hang up.
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: \
                     {content_range}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..n]);
            }
            None => reply(&mut stream, 206, &[("Content-Range", &content_range)], body),
        }
    }

    fn weight_requests(&self) -> Vec<u64> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|(n, _)| n == WEIGHTS)
            .map(|&(_, r)| r)
            .collect()
    }
}

fn reply(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

struct Run {
    outcome: engine::Result<Outcome>,
    progress: Vec<Progress>,
}

/// `cancel`: stop as soon as the weights start arriving.
fn run(endpoint: &str, token: Option<&str>, cache: &Cache, cancel_in_weights: bool) -> Run {
    let source = HubSource::new(Some(endpoint), token.map(str::to_owned)).unwrap();
    let cancel = AtomicBool::new(false);
    let mut progress = Vec::new();
    let outcome = download(&source, cache, REPO, &cancel, &mut |p| {
        if cancel_in_weights && p.file == WEIGHTS && p.done_bytes < p.total_bytes {
            cancel.store(true, Ordering::SeqCst);
        }
        progress.push(p.clone());
    });
    Run { outcome, progress }
}

fn weights_part(cache: &Cache) -> Option<u64> {
    let blobs = cache.path().join("models--google--gemma-3n-test/blobs");
    std::fs::read_dir(blobs)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
}

fn assert_complete(hub: &FakeHub, cache: &Cache, outcome: engine::Result<Outcome>) {
    let dir = engine::cached_model(cache, REPO).expect("the model is complete in the cache");
    assert_eq!(outcome.unwrap(), Outcome::Complete(dir.clone()));
    for (name, bytes, _) in &hub.files {
        if name == "README.md" {
            assert!(!dir.join(name).exists(), "only model files are fetched");
        } else {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
    }
    assert_eq!(weights_part(cache), None, "no partial file is left");
}

fn temp_cache() -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().to_path_buf());
    (dir, cache)
}

#[test]
fn downloads_into_the_hf_hub_cache_with_progress() {
    let (hub, endpoint) = FakeHub::start(Behaviour::default());
    let (_dir, cache) = temp_cache();
    let r = run(&endpoint, None, &cache, false);
    assert_complete(&hub, &cache, r.outcome);
    let total = (WEIGHTS_SIZE + 2 + r#"{"model_type":"gemma3n"}"#.len()) as u64;
    assert!(r.progress.len() >= 3, "{:?}", r.progress);
    assert!(r
        .progress
        .windows(2)
        .all(|w| w[0].done_bytes <= w[1].done_bytes));
    assert!(r.progress.iter().all(|p| p.total_bytes == total));
    assert_eq!(r.progress.last().unwrap().done_bytes, total);
    // Present: a second run only lists the repo.
    let again = run(&endpoint, None, &cache, false);
    assert!(again.outcome.is_ok());
    assert_eq!(hub.weight_requests(), vec![0]);
}

#[test]
fn cancel_keeps_the_partial_file_and_the_next_run_resumes_it() {
    let (hub, endpoint) = FakeHub::start(Behaviour::default());
    let (_dir, cache) = temp_cache();
    let r = run(&endpoint, None, &cache, true);
    assert_eq!(r.outcome.unwrap(), Outcome::Cancelled);
    assert_eq!(engine::cached_model(&cache, REPO), None);
    let kept = weights_part(&cache).expect("the partial file is kept");
    assert!(kept > 0 && kept < WEIGHTS_SIZE as u64, "{kept}");

    let r = run(&endpoint, None, &cache, false);
    assert_complete(&hub, &cache, r.outcome);
    assert_eq!(hub.weight_requests(), vec![0, kept]);
}

#[test]
fn a_dropped_connection_is_a_clear_error_and_resumable() {
    let (hub, endpoint) = FakeHub::start(Behaviour {
        drop_after: Some(1_000_000),
        ..Behaviour::default()
    });
    let (_dir, cache) = temp_cache();
    let err = run(&endpoint, None, &cache, false).outcome.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("connection was lost") && msg.contains("resumes"),
        "{msg}"
    );
    assert_eq!(engine::cached_model(&cache, REPO), None);
    assert_eq!(weights_part(&cache), Some(1_000_000));

    let r = run(&endpoint, None, &cache, false);
    assert_complete(&hub, &cache, r.outcome);
    assert_eq!(hub.weight_requests(), vec![0, 1_000_000]);
}

#[test]
fn a_server_error_is_reported_and_nothing_counts_as_complete() {
    let (hub, endpoint) = FakeHub::start(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    });
    let (_dir, cache) = temp_cache();
    let msg = run(&endpoint, None, &cache, false)
        .outcome
        .unwrap_err()
        .to_string();
    assert!(msg.contains("500"), "{msg}");
    assert_eq!(engine::cached_model(&cache, REPO), None);

    hub.behaviour.lock().unwrap().status = None;
    assert_complete(&hub, &cache, run(&endpoint, None, &cache, false).outcome);
}

#[test]
fn a_gated_repo_asks_for_a_token() {
    let (hub, endpoint) = FakeHub::start(Behaviour {
        token: Some("hf_secret".into()),
        ..Behaviour::default()
    });
    let (_dir, cache) = temp_cache();
    let msg = run(&endpoint, Some("hf_wrong"), &cache, false)
        .outcome
        .unwrap_err()
        .to_string();
    assert!(msg.contains("gated") && msg.contains("token"), "{msg}");
    let r = run(&endpoint, Some("hf_secret"), &cache, false);
    assert_complete(&hub, &cache, r.outcome);
}

#[test]
fn corrupt_bytes_are_deleted_not_kept_as_complete() {
    let (hub, endpoint) = FakeHub::start(Behaviour {
        corrupt: true,
        ..Behaviour::default()
    });
    let (_dir, cache) = temp_cache();
    let msg = run(&endpoint, None, &cache, false)
        .outcome
        .unwrap_err()
        .to_string();
    assert!(msg.contains("corrupt"), "{msg}");
    assert_eq!(engine::cached_model(&cache, REPO), None);
    assert_eq!(weights_part(&cache), None);

    hub.behaviour.lock().unwrap().corrupt = false;
    assert_complete(&hub, &cache, run(&endpoint, None, &cache, false).outcome);
}

#[test]
fn a_server_without_ranges_restarts_the_file() {
    let (hub, endpoint) = FakeHub::start(Behaviour::default());
    let (_dir, cache) = temp_cache();
    let r = run(&endpoint, None, &cache, true);
    assert_eq!(r.outcome.unwrap(), Outcome::Cancelled);
    hub.behaviour.lock().unwrap().ignore_range = true;
    assert_complete(&hub, &cache, run(&endpoint, None, &cache, false).outcome);
}

#[test]
fn a_download_that_cannot_fit_is_refused() {
    let dir = std::path::Path::new("/models");
    let msg = ensure_fits(11_000_000_000, 3_000_000_000, dir)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("not enough disk space") && msg.contains("11.0 GB") && msg.contains("3.0 GB"),
        "{msg}"
    );
    assert!(ensure_fits(1, 1, dir).is_ok());
}
