//! Downloading a model repo into hf-hub's cache: resumable, cancellable, with progress.
//!
//! hf-hub's own download cannot be cancelled and does not check what it received, so the bytes
//! are fetched here with ranged requests, into the same layout hf-hub uses (`blobs/<etag>`,
//! `blobs/<etag>.part` while incomplete, `snapshots/<commit>/<file>`, `refs/main`), so
//! [`crate::resolve_model`] finds the result offline. `refs/main` is written last: a repo
//! counts as present only once every file is complete and verified.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hf_hub::{Cache, Repo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One file of a repo as the Hub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub size: u64,
    /// The name of its blob in the cache: the LFS sha256, else the git blob id.
    pub etag: String,
    /// Set for LFS files (the weights): the received bytes are checked against it.
    pub sha256: Option<String>,
}

/// The files of a repo at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

/// A response body and the offset it starts at (0 when the server ignored the range).
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    pub offset: u64,
}

/// Where the bytes come from: the Hugging Face Hub, or a fake in tests.
pub trait Source: Send + Sync {
    /// The files a Gemma 3n folder needs, at the repo's current commit.
    fn listing(&self, repo_id: &str) -> Result<Listing>;
    /// `file` at `commit`, from byte `offset` on.
    fn open(&self, repo_id: &str, commit: &str, file: &str, offset: u64) -> Result<Body>;
}

/// The Hub (or a mirror at `HF_ENDPOINT`, or a test server), through hf-hub for the listing
/// and URLs and ureq for the ranged requests.
pub struct HubSource {
    api: hf_hub::api::sync::Api,
    agent: ureq::Agent,
    token: Option<String>,
}

impl HubSource {
    /// `endpoint` overrides `HF_ENDPOINT`; `token` is needed for gated repos such as Gemma's.
    pub fn new(endpoint: Option<&str>, token: Option<String>) -> Result<Self> {
        let token = token.or_else(hf_token);
        let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_token(token.clone());
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        let api = builder
            .build()
            .map_err(|e| Error::Download(e.to_string()))?;
        // A stalled connection must end in an error the user can retry, never a hang.  Each
        // file gets a fresh connection: a kept-alive one reused for the next file was seen to
        // stall (and the Hub redirects large files to other hosts anyway).
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .max_idle_connections(0)
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(Duration::from_secs(60))
            .build();
        Ok(Self { api, agent, token })
    }
}

/// `HF_TOKEN`, else the token `huggingface-cli login` saved.
fn hf_token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::from_env().token())
}

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// Config, tokenizer, template and weights; not READMEs, notebooks or other formats.
fn wanted(name: &str) -> bool {
    !name.contains('/')
        && [".json", ".jinja", ".safetensors"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

impl Source for HubSource {
    fn listing(&self, repo_id: &str) -> Result<Listing> {
        let info: RepoInfo = self
            .api
            .model(repo_id.to_string())
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| http_error(repo_id, e))?
            .into_json()
            .map_err(|e| Error::Download(format!("{repo_id}: unreadable file list: {e}")))?;
        let mut files = Vec::new();
        for s in info.siblings.into_iter().filter(|s| wanted(&s.rfilename)) {
            let file = match (s.lfs, s.blob_id, s.size) {
                (Some(lfs), _, _) => RemoteFile {
                    name: s.rfilename,
                    size: lfs.size,
                    etag: lfs.sha256.clone(),
                    sha256: Some(lfs.sha256),
                },
                (None, Some(blob_id), Some(size)) => RemoteFile {
                    name: s.rfilename,
                    size,
                    etag: blob_id,
                    sha256: None,
                },
                _ => {
                    return Err(Error::Download(format!(
                        "{repo_id}: the Hub did not give the size of {}",
                        s.rfilename
                    )))
                }
            };
            files.push(file);
        }
        if !files.iter().any(|f| f.name == "config.json") {
            return Err(Error::Download(format!(
                "{repo_id} has no config.json: it is not a model repo"
            )));
        }
        Ok(Listing {
            commit: info.sha,
            files,
        })
    }

    fn open(&self, repo_id: &str, commit: &str, file: &str, offset: u64) -> Result<Body> {
        let repo = Repo::with_revision(
            repo_id.to_string(),
            hf_hub::RepoType::Model,
            commit.to_string(),
        );
        let mut request = self
            .agent
            .get(&self.api.repo(repo).url(file))
            .set("Range", &format!("bytes={offset}-"));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = request.call().map_err(|e| http_error(repo_id, e))?;
        // 206 continues at `offset`; a plain 200 sends the whole file again.
        let offset = if response.status() == 206 { offset } else { 0 };
        Ok(Body {
            reader: Box::new(response.into_reader()),
            offset,
        })
    }
}

fn http_error(repo_id: &str, e: ureq::Error) -> Error {
    Error::Download(match e {
        ureq::Error::Status(401 | 403, _) => format!(
            "{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} and \
             enter a Hugging Face access token (read permission)"
        ),
        ureq::Error::Status(404, _) => format!("{repo_id} was not found on the Hub"),
        ureq::Error::Status(code, r) => {
            format!("{repo_id}: the server answered {code} {}", r.status_text())
        }
        ureq::Error::Transport(t) => format!("cannot reach the Hub: {t}"),
    })
}

/// How far a download is, reported a few times a second.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The file being received.
    pub file: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Over the last few seconds of this run (bytes resumed from disk do not count).
    pub bytes_per_second: f64,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The snapshot folder, ready to load.
    Complete(PathBuf),
    /// Stopped by the caller; partial files are kept for the next run to resume.
    Cancelled,
}

const REPORT_EVERY: Duration = Duration::from_millis(200);
const SPEED_WINDOW: Duration = Duration::from_secs(5);

/// Speed over a sliding window, and when to report.
struct Meter {
    samples: VecDeque<(Instant, u64)>,
    received: u64,
    last_report: Option<Instant>,
}

impl Meter {
    fn new() -> Self {
        Self {
            samples: VecDeque::from([(Instant::now(), 0)]),
            received: 0,
            last_report: None,
        }
    }

    fn add(&mut self, n: u64) {
        let now = Instant::now();
        self.received += n;
        self.samples.push_back((now, self.received));
        while self.samples.len() > 2 && now - self.samples[1].0 > SPEED_WINDOW {
            self.samples.pop_front();
        }
    }

    fn bytes_per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self.last_report.is_none_or(|t| now - t >= REPORT_EVERY);
        if due {
            self.last_report = Some(now);
        }
        due
    }
}

/// The cache folder of one repo.
fn repo_dir(cache: &Cache, repo_id: &str) -> PathBuf {
    cache
        .path()
        .join(Repo::model(repo_id.to_string()).folder_name())
}

/// Bytes of `listing` not yet on disk, counting partial files as far as they go.
pub fn missing_bytes(cache: &Cache, repo_id: &str, listing: &Listing) -> u64 {
    let blobs = repo_dir(cache, repo_id).join("blobs");
    listing
        .files
        .iter()
        .map(|f| {
            let have = std::fs::metadata(blobs.join(&f.etag))
                .or_else(|_| std::fs::metadata(part_path(&blobs, &f.etag)))
                .map_or(0, |m| m.len());
            f.size.saturating_sub(have)
        })
        .sum()
}

/// Bytes that interrupted downloads of `repo_id` left, for the next run to continue.
pub fn partial_bytes(cache: &Cache, repo_id: &str) -> u64 {
    std::fs::read_dir(repo_dir(cache, repo_id).join("blobs"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Free space where `path` is, or its nearest existing parent.
pub fn free_space(path: &Path) -> Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    fs4::available_space(existing).map_err(|e| {
        Error::Download(format!(
            "cannot tell the free space in {}: {e}",
            existing.display()
        ))
    })
}

/// Refuses a download that cannot fit, before a byte of it is fetched.
pub fn ensure_fits(needed: u64, free: u64, dir: &Path) -> Result<()> {
    if needed > free {
        return Err(Error::Download(format!(
            "not enough disk space: the download needs {} more in {}, but only {} is free",
            human_bytes(needed),
            dir.display(),
            human_bytes(free)
        )));
    }
    Ok(())
}

/// `1.2 GB`, `340 MB`, `12 KB`, `5 B`.
fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.0} KB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.0} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}

fn part_path(blobs: &Path, etag: &str) -> PathBuf {
    blobs.join(format!("{etag}.part"))
}

/// Fetches every file of `repo_id` that the cache lacks, continuing partial files.
pub fn download(
    source: &dyn Source,
    cache: &Cache,
    repo_id: &str,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let listing = source.listing(repo_id)?;
    let dir = repo_dir(cache, repo_id);
    ensure_fits(
        missing_bytes(cache, repo_id, &listing),
        free_space(&dir)?,
        &dir,
    )?;
    let blobs = dir.join("blobs");
    let snapshot = dir.join("snapshots").join(&listing.commit);
    std::fs::create_dir_all(&blobs)?;
    std::fs::create_dir_all(&snapshot)?;

    let total_bytes = listing.files.iter().map(|f| f.size).sum();
    let mut done_bytes = 0;
    let mut meter = Meter::new();
    for file in &listing.files {
        let blob = blobs.join(&file.etag);
        if !std::fs::metadata(&blob).is_ok_and(|m| m.len() == file.size) {
            let part = part_path(&blobs, &file.etag);
            // Reported when a file starts and ends, and a few times a second between.
            let mut started = false;
            let mut on_chunk = |file_done: u64, n: u64| {
                meter.add(n);
                let first = !std::mem::replace(&mut started, true);
                if meter.due() || first || file_done == file.size {
                    let done = done_bytes + file_done;
                    let speed = meter.bytes_per_second();
                    on_progress(&Progress {
                        file: file.name.clone(),
                        done_bytes: done,
                        total_bytes,
                        bytes_per_second: speed,
                        eta_seconds: (speed > 0.0).then(|| (total_bytes - done) as f64 / speed),
                    });
                }
            };
            if !fetch(
                source,
                repo_id,
                &listing.commit,
                file,
                &part,
                cancel,
                &mut on_chunk,
            )? {
                return Ok(Outcome::Cancelled);
            }
            std::fs::rename(&part, &blob)?;
        }
        done_bytes += file.size;
        link(&blob, &snapshot.join(&file.name))?;
    }
    cache
        .model(repo_id.to_string())
        .create_ref(&listing.commit)?;
    Ok(Outcome::Complete(snapshot))
}

/// Appends the rest of `file` to `part`, calling `on_chunk(bytes of the file on disk, bytes
/// just received)`; `false` when cancelled.
fn fetch(
    source: &dyn Source,
    repo_id: &str,
    commit: &str,
    file: &RemoteFile,
    part: &Path,
    cancel: &AtomicBool,
    on_chunk: &mut dyn FnMut(u64, u64),
) -> Result<bool> {
    let have = std::fs::metadata(part).map_or(0, |m| m.len());
    // A part longer than the file is from another version: start over.
    let start = if have > file.size { 0 } else { have };
    tracing::info!("{}: requesting bytes {start}..{}", file.name, file.size);
    let mut body = source.open(repo_id, commit, &file.name, start)?;
    let mut out = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(part)?;
    out.set_len(body.offset)?;
    out.seek(SeekFrom::End(0))?;
    let mut hasher = file.sha256.as_ref().map(|_| Sha256::new());
    if let Some(h) = hasher.as_mut() {
        // The bytes already on disk are part of the checksum too.
        std::io::copy(&mut File::open(part)?, h)?;
    }
    let lost = |got: u64, why: &dyn std::fmt::Display| {
        Error::Download(format!(
            "{}: the connection was lost after {} of {} ({why}); the partial file is kept, so \
             downloading again resumes from there",
            file.name,
            human_bytes(got),
            human_bytes(file.size)
        ))
    };
    let mut got = body.offset;
    let mut buf = vec![0u8; 256 * 1024];
    while got < file.size {
        if cancel.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let n = match body.reader.read(&mut buf) {
            Ok(0) => return Err(lost(got, &"the server closed it")),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(lost(got, &e)),
        };
        let chunk = &buf[..n.min((file.size - got) as usize)];
        out.write_all(chunk)?;
        if let Some(h) = hasher.as_mut() {
            h.update(chunk);
        }
        got += chunk.len() as u64;
        on_chunk(got, chunk.len() as u64);
    }
    out.sync_all()?;
    if let (Some(h), Some(expected)) = (hasher, &file.sha256) {
        let actual = format!("{:x}", h.finalize());
        if &actual != expected {
            // Unusable bytes: the next run must start this file afresh.
            std::fs::remove_file(part)?;
            return Err(Error::Download(format!(
                "{}: the received file is corrupt (sha256 {actual}, expected {expected}); \
                 it was deleted, download again",
                file.name
            )));
        }
    }
    tracing::info!("{}: received and checked", file.name);
    Ok(true)
}

/// `snapshots/<commit>/<name>` pointing at its blob, as hf-hub lays it out.
fn link(blob: &Path, pointer: &Path) -> Result<()> {
    if pointer.exists() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        let target = Path::new("../../blobs").join(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(target, pointer)?;
    }
    #[cfg(not(unix))]
    {
        // Symlinks need privileges on Windows; a copy works everywhere.
        std::fs::copy(blob, pointer)?;
    }
    Ok(())
}
