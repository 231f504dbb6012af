//! One resumable file download: `<target>.incomplete`, `Range` resumption with back-off,
//! progress in the log, and the per-file lock that keeps two processes off one partial file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{HubError, ResultExt};
use crate::http::{header_u64, parse_content_range, Follow, Http};

type Result<T, E = HubError> = std::result::Result<T, E>;

fn incomplete_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_os_string();
    name.push(".incomplete");
    PathBuf::from(name)
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Logs a transfer's progress: every 10 %, at most every 30 s when the size is unknown.
struct Progress<'a> {
    label: &'a str,
    started: Instant,
    last_log: Instant,
    first_byte: u64,
    next_percent: u64,
}

impl<'a> Progress<'a> {
    fn new(label: &'a str) -> Self {
        let now = Instant::now();
        Self {
            label,
            started: now,
            last_log: now,
            first_byte: 0,
            next_percent: 10,
        }
    }

    fn rate(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{}/s",
            human_bytes((done.saturating_sub(self.first_byte) as f64 / secs) as u64)
        )
    }

    fn update(&mut self, done: u64, total: Option<u64>) {
        match total {
            Some(total) if total > 0 => {
                let percent = done.saturating_mul(100) / total;
                if percent >= self.next_percent && done < total {
                    tracing::info!(
                        "{}: {} of {} ({percent}%, {})",
                        self.label,
                        human_bytes(done),
                        human_bytes(total),
                        self.rate(done)
                    );
                    self.next_percent = (percent / 10 + 1) * 10;
                    self.last_log = Instant::now();
                }
            }
            _ => {
                if self.last_log.elapsed() >= Duration::from_secs(30) {
                    tracing::info!(
                        "{}: {} so far ({})",
                        self.label,
                        human_bytes(done),
                        self.rate(done)
                    );
                    self.last_log = Instant::now();
                }
            }
        }
    }
}

pub(crate) struct Download<'a> {
    pub(crate) http: &'a Http,
    pub(crate) url: &'a str,
    pub(crate) dest: &'a Path,
    /// The size the hub's metadata announced, when it did.
    pub(crate) expected: Option<u64>,
    /// "Qwen/Qwen3-8B/model.safetensors", for messages.
    pub(crate) label: &'a str,
    pub(crate) retries: u32,
}

enum Attempt {
    /// Transient: try again, resuming from what is on disk.
    Retry(HubError),
    Fatal(HubError),
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(5)))
}

/// Downloads `d.url` to `d.dest` through `<dest>.incomplete`, resuming what an earlier
/// attempt or run left there.
pub(crate) fn download_file(d: &Download) -> Result<()> {
    let partial = incomplete_path(d.dest);
    if let Some(parent) = d.dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let mut progress = Progress::new(d.label);
    let mut attempt = 0;
    loop {
        match download_attempt(d, &partial, &mut progress) {
            Ok(size) => {
                fs::rename(&partial, d.dest).with_context(|| {
                    format!("moving {} to {}", partial.display(), d.dest.display())
                })?;
                tracing::info!(
                    "{}: done, {} in {:.1} s",
                    d.label,
                    human_bytes(size),
                    progress.started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(Attempt::Retry(error)) if attempt < d.retries => {
                let wait = backoff(attempt);
                attempt += 1;
                tracing::warn!(
                    "{}: {}; retrying in {:.1} s (attempt {attempt} of {})",
                    d.label,
                    error.full_message(),
                    wait.as_secs_f64(),
                    d.retries
                );
                std::thread::sleep(wait);
            }
            Err(Attempt::Retry(error)) => {
                let kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
                return Err(error.context(format!(
                    "downloading {} failed after {} attempt(s); {} received so far are kept in \
                     {} and the next start resumes from there",
                    d.label,
                    attempt + 1,
                    human_bytes(kept),
                    partial.display()
                )));
            }
            Err(Attempt::Fatal(error)) => return Err(error),
        }
    }
}

fn remove_partial(partial: &Path) {
    if let Err(e) = fs::remove_file(partial) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("could not remove {}: {e}", partial.display());
        }
    }
}

/// One request; `Ok(size)` when `partial` holds the whole file.
fn download_attempt(d: &Download, partial: &Path, progress: &mut Progress) -> Result<u64, Attempt> {
    let fatal = Attempt::Fatal;
    let mut start = match fs::metadata(partial) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(fatal(HubError::Io {
                context: format!("reading {}", partial.display()),
                source: e,
            }))
        }
    };
    if let Some(size) = d.expected {
        if start > size {
            tracing::warn!(
                "{}: the partial file is longer than the file ({start} > {size} bytes); starting over",
                d.label
            );
            remove_partial(partial);
            start = 0;
        }
        if start == size {
            if size == 0 {
                File::create(partial)
                    .with_context(|| format!("creating {}", partial.display()))
                    .map_err(fatal)?;
            }
            return Ok(size);
        }
    }

    let mut headers = Vec::new();
    if start > 0 {
        tracing::info!("{}: resuming from byte {start}", d.label);
        headers.push(("Range", format!("bytes={start}-")));
    }
    let response = match d.http.send("GET", d.url, &headers, Follow::All) {
        Ok(response) => response,
        Err(e) if start > 0 && e.status() == Some(416) => {
            remove_partial(partial);
            return Err(Attempt::Retry(HubError::Transfer(format!(
                "the server refused to resume from byte {start} (HTTP 416); starting over"
            ))));
        }
        // Connection failures are retried only once the hub has answered in this run: an
        // unreachable hub fails at once, with its own message.
        Err(e)
            if e.is_transient() && (!e.is_connect() || d.http.reached.load(Ordering::Relaxed)) =>
        {
            return Err(Attempt::Retry(e.into()))
        }
        Err(e) => return Err(fatal(e.into())),
    };

    let status = response.status();
    let length = header_u64(&response, "content-length");
    let (offset, total) = match status {
        206 => match response
            .header("content-range")
            .and_then(parse_content_range)
        {
            Some((first, total)) if first == start => (start, total.or(length.map(|l| start + l))),
            other => {
                remove_partial(partial);
                return Err(Attempt::Retry(HubError::Transfer(format!(
                    "asked for bytes from {start}, the server sent a range starting at {:?}; \
                     starting over",
                    other.map(|(first, _)| first)
                ))));
            }
        },
        200 => {
            if start > 0 {
                tracing::warn!(
                    "{}: the server ignored the range request; downloading from the start",
                    d.label
                );
            }
            (0, length)
        }
        _ => {
            return Err(fatal(HubError::Transfer(format!(
                "{} answered HTTP {status} for {} (expected 200 or 206)",
                d.url, d.label
            ))))
        }
    };
    if let (Some(expected), Some(total)) = (d.expected, total) {
        if expected != total {
            remove_partial(partial);
            return Err(fatal(HubError::Transfer(format!(
                "the hub announced {expected} bytes for {} but the download server sends {total}; \
                 the file changed on the hub meanwhile or the mirror is inconsistent — try again",
                d.label
            ))));
        }
    }
    let total = total.or(d.expected);

    let file = if offset == 0 {
        File::create(partial)
    } else {
        OpenOptions::new().append(true).open(partial)
    }
    .with_context(|| format!("opening {}", partial.display()))
    .map_err(fatal)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 256 << 10];
    let mut done = offset;
    progress.first_byte = offset;
    let write_error = |e: io::Error| {
        fatal(HubError::Io {
            context: format!("writing {}", partial.display()),
            source: e,
        })
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.flush().map_err(write_error)?;
                let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                return Err(Attempt::Retry(HubError::Transfer(format!(
                    "the connection broke after {done}{of} bytes: {e}"
                ))));
            }
        };
        if total.is_some_and(|t| done + n as u64 > t) {
            drop(out);
            remove_partial(partial);
            return Err(fatal(HubError::Transfer(format!(
                "{} sent more bytes than the {} it announced for {}",
                d.url,
                total.unwrap_or_default(),
                d.label
            ))));
        }
        out.write_all(&buf[..n]).map_err(write_error)?;
        done += n as u64;
        progress.update(done, total);
    }
    let file = out.into_inner().map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    match total {
        Some(t) if done < t => Err(Attempt::Retry(HubError::Transfer(format!(
            "the connection closed after {done} of {t} bytes"
        )))),
        _ => Ok(done),
    }
}

/// Holds an exclusive `flock` on `path` (released when the file is closed, also by a crash),
/// waiting for another process that holds it. Where the file system has no locks, goes on.
pub(crate) fn lock_file(path: &Path, what: &str) -> Result<Option<File>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(
                "another process is downloading {what}; waiting for it (lock {})",
                path.display()
            );
            file.lock()
                .with_context(|| format!("waiting for the lock {}", path.display()))?;
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                "cannot lock {} ({e}); downloading {what} without a lock",
                path.display()
            );
            Ok(None)
        }
    }
}
