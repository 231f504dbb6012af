//! Loopback fakes of the Hugging Face hub, its CDN and ModelScope, serving fixture models.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One request the fake saw.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self, key: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf8");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else if bytes[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many body bytes (after announcing the full length), then close.
    pub drop_after: Option<usize>,
}

impl Resp {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            drop_after: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn json(status: u16, value: serde_json::Value) -> Self {
        let mut r = Resp::new(status).header("Content-Type", "application/json");
        r.body = value.to_string().into_bytes();
        r
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1 (keep-alive, one thread per connection).
pub struct Server {
    pub base: String,
    pub log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    pub fn start(handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                let log = log2.clone();
                std::thread::spawn(move || serve_connection(stream, handler, log));
            }
        });
        Server { base, log }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().expect("log").clone()
    }
}

fn serve_connection(stream: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Req>>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let req = Req {
            method,
            target,
            headers,
        };
        log.lock().expect("log").push(req.clone());
        let resp = handler(&req);
        let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        let has_length = resp
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_length {
            head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if req.method != "HEAD" {
            let body = match resp.drop_after {
                Some(n) => &resp.body[..n.min(resp.body.len())],
                None => &resp.body[..],
            };
            if out.write_all(body).is_err() {
                return;
            }
        }
        let _ = out.flush();
        if resp.drop_after.is_some() {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Serves `data` honouring `Range: bytes=a-[b]` (206 / 416) unless `ignore_range`.
pub fn serve_bytes(req: &Req, data: &[u8], ignore_range: bool) -> Resp {
    let len = data.len() as u64;
    let range = req
        .header("range")
        .filter(|_| !ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| {
            let (a, b) = r.split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                b.parse().ok()?
            };
            Some((a, b.min(len.saturating_sub(1))))
        });
    match range {
        Some((a, _)) if a >= len => {
            Resp::new(416).header("Content-Range", format!("bytes */{len}"))
        }
        Some((a, b)) => {
            let mut r = Resp::new(206)
                .header("Content-Range", format!("bytes {a}-{b}/{len}"))
                .header("Content-Length", (b - a + 1).to_string());
            if req.method != "HEAD" {
                r.body = data[a as usize..=b as usize].to_vec();
            }
            r
        }
        None => {
            let mut r = Resp::new(200).header("Content-Length", len.to_string());
            if req.method != "HEAD" {
                r.body = data.to_vec();
            }
            r
        }
    }
}

/// FNV-1a, hex: a stand-in for the sha256 / git oid etags a real hub sends.
pub fn etag_of(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", data.len())
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The files of a fixture model directory, by name.
pub fn read_dir_files(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read fixture dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read fixture"))
        })
        .collect()
}

/// What a fake serves for one repository.
pub struct FakeRepo {
    pub id: String,
    pub sha: String,
    pub files: HashMap<String, Vec<u8>>,
    /// Files the repository lists but answers 404 for (a broken mirror / a missing shard).
    pub missing: Vec<String>,
}

impl FakeRepo {
    pub fn from_fixture(id: &str, fixture: &str) -> FakeRepo {
        FakeRepo {
            id: id.to_string(),
            sha: format!("{:0>40}", etag_of(fixture.as_bytes())),
            files: read_dir_files(&fixtures().join(fixture)),
            missing: Vec::new(),
        }
    }
}

/// Shared switches of a fake.
#[derive(Default)]
pub struct Faults {
    /// file name → bytes after which the next body GET of it is cut off (once).
    pub drop_once: HashMap<String, usize>,
    /// Answer range requests with 200 and the whole file.
    pub ignore_range: bool,
}

/// Files above this size are "LFS": the hub redirects them to the CDN, as huggingface.co does.
pub const LFS_THRESHOLD: usize = 1 << 20;

/// A fake Hugging Face hub plus its CDN (a second server, so a second host:port).
pub struct FakeHf {
    pub hub: Server,
    pub cdn: Server,
    pub faults: Arc<Mutex<Faults>>,
}

fn take_drop(faults: &Mutex<Faults>, file: &str, req: &Req) -> Option<usize> {
    if req.method != "GET" {
        return None;
    }
    faults.lock().expect("faults").drop_once.remove(file)
}

impl FakeHf {
    pub fn start(repos: Vec<FakeRepo>) -> FakeHf {
        let repos = Arc::new(repos);
        let faults = Arc::new(Mutex::new(Faults::default()));

        // The CDN: /<etag> serves the blob of that etag.
        let cdn_repos = repos.clone();
        let cdn_faults = faults.clone();
        let cdn = Server::start(Arc::new(move |req: &Req| {
            let etag = req.path().trim_start_matches('/');
            for repo in cdn_repos.iter() {
                for (name, data) in &repo.files {
                    if etag_of(data) == etag {
                        let ignore = cdn_faults.lock().expect("faults").ignore_range;
                        let mut r = serve_bytes(req, data, ignore);
                        r.drop_after = take_drop(&cdn_faults, name, req);
                        return r;
                    }
                }
            }
            Resp::new(404)
        }));

        let cdn_base = cdn.base.clone();
        let hub_faults = faults.clone();
        let hub = Server::start(Arc::new(move |req: &Req| {
            let path = req.path().to_string();
            if let Some(rest) = path.strip_prefix("/api/models/") {
                let Some((id, rev)) = rest.split_once("/revision/") else {
                    return Resp::new(404);
                };
                let Some(repo) = repos.iter().find(|r| r.id == id) else {
                    return Resp::json(401, serde_json::json!({"error": "Repository not found"}))
                        .header("X-Error-Code", "RepoNotFound");
                };
                if rev != "main" && rev != repo.sha {
                    return Resp::json(404, serde_json::json!({"error": "Invalid rev id"}))
                        .header("X-Error-Code", "RevisionNotFound");
                }
                let mut names: Vec<&String> = repo.files.keys().collect();
                names.sort();
                let siblings: Vec<_> = names
                    .iter()
                    .map(|n| serde_json::json!({ "rfilename": n }))
                    .chain(std::iter::once(
                        serde_json::json!({"rfilename": "README.md"}),
                    ))
                    .collect();
                return Resp::json(
                    200,
                    serde_json::json!({"id": repo.id, "sha": repo.sha, "siblings": siblings}),
                );
            }
            let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
                return Resp::new(404);
            };
            let Some(repo) = repos.iter().find(|r| r.id == id) else {
                return Resp::json(401, serde_json::json!({"error": "Repository not found"}))
                    .header("X-Error-Code", "RepoNotFound");
            };
            let Some((rev, file)) = rest.split_once('/') else {
                return Resp::new(404);
            };
            assert!(
                rev == "main" || rev == repo.sha,
                "unexpected revision {rev}"
            );
            let data = match repo.files.get(file) {
                Some(data) if !repo.missing.iter().any(|m| m == file) => data,
                _ => {
                    return Resp::json(404, serde_json::json!({"error": "Entry not found"}))
                        .header("X-Error-Code", "EntryNotFound")
                        .header("X-Repo-Commit", repo.sha.clone())
                }
            };
            let etag = etag_of(data);
            if data.len() > LFS_THRESHOLD {
                Resp::new(302)
                    .header("Location", format!("{cdn_base}/{etag}"))
                    .header("X-Linked-Etag", format!("\"{etag}\""))
                    .header("X-Linked-Size", data.len().to_string())
                    .header("ETag", "\"0123456789abcdef0123456789abcdef01234567\"")
                    .header("X-Repo-Commit", repo.sha.clone())
            } else {
                let ignore = hub_faults.lock().expect("faults").ignore_range;
                let mut r = serve_bytes(req, data, ignore)
                    .header("ETag", format!("\"{etag}\""))
                    .header("X-Repo-Commit", repo.sha.clone());
                r.drop_after = take_drop(&hub_faults, file, req);
                r
            }
        }));
        FakeHf { hub, cdn, faults }
    }
}

/// A fake ModelScope: `/api/v1/models/<id>/repo?Revision=..&FilePath=..`, large files
/// redirected to a second server (the OSS bucket).
pub struct FakeModelScope {
    pub hub: Server,
    pub oss: Server,
    pub faults: Arc<Mutex<Faults>>,
}

impl FakeModelScope {
    pub fn start(repos: Vec<FakeRepo>) -> FakeModelScope {
        let repos = Arc::new(repos);
        let faults = Arc::new(Mutex::new(Faults::default()));

        let oss_repos = repos.clone();
        let oss_faults = faults.clone();
        let oss = Server::start(Arc::new(move |req: &Req| {
            let path = req.path().trim_start_matches('/').to_string();
            for repo in oss_repos.iter() {
                for (name, data) in &repo.files {
                    if path == format!("{}/{name}", repo.id) {
                        let ignore = oss_faults.lock().expect("faults").ignore_range;
                        let mut r = serve_bytes(req, data, ignore);
                        r.drop_after = take_drop(&oss_faults, name, req);
                        return r;
                    }
                }
            }
            Resp::new(404)
        }));

        let oss_base = oss.base.clone();
        let hub_faults = faults.clone();
        let hub = Server::start(Arc::new(move |req: &Req| {
            let not_found = || {
                Resp::json(
                    404,
                    serde_json::json!({"Code": 10010205001u64, "Message": "not found", "Success": false}),
                )
            };
            let path = req.path().to_string();
            let Some(id) = path
                .strip_prefix("/api/v1/models/")
                .and_then(|p| p.strip_suffix("/repo"))
            else {
                return not_found();
            };
            let Some(repo) = repos.iter().find(|r| r.id == id) else {
                return not_found();
            };
            assert_eq!(req.query("Revision").as_deref(), Some("master"));
            let Some(file) = req.query("FilePath") else {
                return not_found();
            };
            let data = match repo.files.get(&file) {
                Some(data) if !repo.missing.contains(&file) => data,
                _ => return not_found(),
            };
            if data.len() > LFS_THRESHOLD {
                Resp::new(302).header(
                    "Location",
                    format!("{oss_base}/{}/{file}?Expires=1&Signature=x", repo.id),
                )
            } else {
                // Like ModelScope's own answers for small files: no range support.
                let mut r = serve_bytes(req, data, true);
                r.drop_after = take_drop(&hub_faults, &file, req);
                r
            }
        }));
        FakeModelScope { hub, oss, faults }
    }
}

/// An environment with only these variables (never the machine's).
pub fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |key: &str| map.get(key).cloned()
}

/// Every regular file under `dir` (following symlinks), by relative name.
pub fn read_tree(dir: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).expect("read result dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            for (sub, data) in read_tree(&path) {
                out.insert(format!("{name}/{sub}"), data);
            }
        } else {
            out.insert(name, std::fs::read(&path).expect("read result file"));
        }
    }
    out
}
