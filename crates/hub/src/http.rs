//! HTTP for the downloader: ureq agents behind the environment's proxies, and redirects
//! followed by hand so credentials go to the hub's own host only.

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::env::{no_proxy_matches, proxy_from_env, var};
use crate::error::HubError;

const MAX_REDIRECTS: usize = 10;

/// A request that failed.
#[derive(Debug)]
pub enum HttpError {
    /// The server answered with an error status.
    Status {
        status: u16,
        url: String,
        /// Hugging Face's `X-Error-Code` (RepoNotFound, EntryNotFound, GatedRepo, ...).
        error_code: Option<String>,
        message: String,
    },
    /// No usable answer: DNS, connect, TLS, a broken connection, bad headers.
    Transport {
        url: String,
        connect: bool,
        message: String,
    },
}

impl HttpError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport { .. } => None,
        }
    }

    pub(crate) fn error_code(&self) -> Option<&str> {
        match self {
            HttpError::Status { error_code, .. } => error_code.as_deref(),
            HttpError::Transport { .. } => None,
        }
    }

    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, HttpError::Transport { connect: true, .. })
    }

    /// Worth trying again later: the network, or the server's own trouble.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            HttpError::Transport { .. } => true,
            HttpError::Status { status, .. } => *status >= 500 || matches!(*status, 408 | 429),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Status {
                status,
                url,
                message,
                ..
            } => {
                write!(f, "{url} answered HTTP {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            // ureq's own messages usually name the URL already.
            HttpError::Transport { url, message, .. } if message.contains(url.as_str()) => {
                write!(f, "{message}")
            }
            HttpError::Transport { url, message, .. } => write!(f, "{url}: {message}"),
        }
    }
}

impl std::error::Error for HttpError {}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Every redirect (downloads, API calls).
    All,
    /// Only redirects without a host, as huggingface_hub does for file metadata: a redirect to
    /// the CDN is returned as is, with the hub's headers on it.
    Relative,
}

fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// `host[:port]`, without user info, lower-cased.
fn authority_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    authority.to_ascii_lowercase()
}

fn host_of(url: &str) -> String {
    let authority = authority_of(url);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    authority.split(':').next().unwrap_or_default().to_string()
}

fn resolve_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = scheme_of(base);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let origin = format!("{scheme}://{}", authority_of(base));
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = rest[..path_end]
        .find('/')
        .map_or("/", |start| &rest[start..path_end]);
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{location}")
}

fn is_relative_location(location: &str) -> bool {
    !location.contains("://") && !location.starts_with("//")
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub(crate) struct Http {
    direct: ureq::Agent,
    https_proxy: Option<ureq::Agent>,
    http_proxy: Option<ureq::Agent>,
    no_proxy: Option<String>,
    /// `host[:port]` of the hub; only requests there carry `auth`.
    hub_authority: String,
    auth: Vec<(&'static str, String)>,
    /// Whether the hub has answered anything yet (an unreachable hub then fails fast).
    pub(crate) reached: AtomicBool,
}

impl Http {
    pub(crate) fn new(
        endpoint: &str,
        auth: Vec<(&'static str, String)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, HubError> {
        let builder = || {
            ureq::AgentBuilder::new()
                .redirects(0)
                .timeout_connect(Duration::from_secs(20))
                .timeout_read(Duration::from_secs(60))
                .timeout_write(Duration::from_secs(60))
                .user_agent(concat!("qwen3-serve/", env!("CARGO_PKG_VERSION")))
        };
        let proxied = |scheme: &str| -> Result<Option<ureq::Agent>, HubError> {
            let Some(url) = proxy_from_env(env, scheme) else {
                return Ok(None);
            };
            let proxy = ureq::Proxy::new(&url).map_err(|e| {
                HubError::Config(format!(
                    "the {scheme} proxy {url:?} from the environment is not usable: {e}"
                ))
            })?;
            Ok(Some(builder().proxy(proxy).build()))
        };
        Ok(Self {
            direct: builder().build(),
            https_proxy: proxied("https")?,
            http_proxy: proxied("http")?,
            no_proxy: var(&env, "no_proxy").or_else(|| var(&env, "NO_PROXY")),
            hub_authority: authority_of(endpoint),
            auth,
            reached: AtomicBool::new(false),
        })
    }

    fn agent_for(&self, url: &str) -> &ureq::Agent {
        let no_proxy = |key: &str| {
            (key == "NO_PROXY" || key == "no_proxy")
                .then(|| self.no_proxy.clone())
                .flatten()
        };
        if no_proxy_matches(no_proxy, &host_of(url)) {
            return &self.direct;
        }
        let proxy = if scheme_of(url).eq_ignore_ascii_case("https") {
            self.https_proxy.as_ref()
        } else {
            self.http_proxy.as_ref()
        };
        proxy.unwrap_or(&self.direct)
    }

    pub(crate) fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        follow: Follow,
    ) -> Result<ureq::Response, HttpError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .agent_for(&url)
                .request(method, &url)
                .set("Accept-Encoding", "identity");
            for (name, value) in headers {
                request = request.set(name, value);
            }
            if authority_of(&url) == self.hub_authority {
                for (name, value) in &self.auth {
                    request = request.set(name, value);
                }
            }
            match request.call() {
                Ok(response) => {
                    self.reached.store(true, Ordering::Relaxed);
                    let location = response.header("location").map(str::to_string);
                    match location {
                        Some(location)
                            if (300..400).contains(&response.status())
                                && (follow == Follow::All || is_relative_location(&location)) =>
                        {
                            url = resolve_location(&url, &location);
                        }
                        _ => return Ok(response),
                    }
                }
                Err(ureq::Error::Status(status, response)) => {
                    self.reached.store(true, Ordering::Relaxed);
                    return Err(status_error(status, &url, response));
                }
                Err(ureq::Error::Transport(transport)) => {
                    let connect = matches!(
                        transport.kind(),
                        ureq::ErrorKind::Dns
                            | ureq::ErrorKind::ConnectionFailed
                            | ureq::ErrorKind::ProxyConnect
                    );
                    return Err(HttpError::Transport {
                        url,
                        connect,
                        message: transport.to_string(),
                    });
                }
            }
        }
        Err(HttpError::Transport {
            url,
            connect: false,
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    pub(crate) fn get_json(&self, url: &str) -> Result<serde_json::Value, HttpError> {
        let response = self.send("GET", url, &[], Follow::All)?;
        let mut text = String::new();
        response
            .into_reader()
            .take(64 << 20)
            .read_to_string(&mut text)
            .map_err(|e| HttpError::Transport {
                url: url.to_string(),
                connect: false,
                message: format!("reading the answer: {e}"),
            })?;
        serde_json::from_str(&text).map_err(|e| HttpError::Transport {
            url: url.to_string(),
            connect: false,
            message: format!("the answer is not JSON ({e}); is the endpoint a model hub?"),
        })
    }
}

fn status_error(status: u16, url: &str, response: ureq::Response) -> HttpError {
    let error_code = response.header("x-error-code").map(str::to_string);
    let mut body = Vec::new();
    // The body only adds detail to the message; failing to read it is not an error itself.
    let _ = response.into_reader().take(4096).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|json| {
            ["error", "Message", "message"]
                .iter()
                .find_map(|key| json.get(key).and_then(|v| v.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| text.trim().chars().take(200).collect());
    HttpError::Status {
        status,
        url: url.to_string(),
        error_code,
        message,
    }
}

pub(crate) fn header_u64(response: &ureq::Response, name: &str) -> Option<u64> {
    response.header(name).and_then(|v| v.trim().parse().ok())
}

/// `bytes <first>-<last>/<total>` → (first, total); total `*` is unknown.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, total))
}
