//! The downloader's error type: what went wrong, with the cause chained through `source()`.

use std::io;

use crate::http::HttpError;

/// Why a model could not be resolved or downloaded. `Display` is the outermost message; the
/// causes follow through [`std::error::Error::source`] (anyhow's `{:#}` prints them all, as
/// does [`HubError::full_message`]).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A hub id, revision or file name that is not acceptable, or a hub answer that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The repository or the cache lacks a file the server needs.
    #[error("{0}")]
    Missing(String),
    /// The hub cannot be reached or refuses access; the message says what to do instead.
    #[error("{0}")]
    Unavailable(String),
    /// A transfer went wrong (broken connection, a range or size the server got wrong).
    #[error("{0}")]
    Transfer(String),
    /// The environment does not say where to put the cache, or names an unusable proxy.
    #[error("{0}")]
    Config(String),
    /// A request failed, without more to say about it.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The local file system.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A file that should hold JSON does not.
    #[error("{context}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// Another error, with what was being done when it happened.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        inner: Box<HubError>,
    },
}

impl HubError {
    /// The message and every cause, `": "`-separated (what anyhow's `{:#}` prints).
    pub fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }

    /// This error, under `context`.
    pub(crate) fn context(self, context: impl Into<String>) -> Self {
        HubError::Context {
            context: context.into(),
            inner: Box::new(self),
        }
    }

    /// The failed request beneath any context.
    pub(crate) fn http(&self) -> Option<&HttpError> {
        match self {
            HubError::Http(http) => Some(http),
            HubError::Context { inner, .. } => inner.http(),
            _ => None,
        }
    }

    /// The failed request beneath any context (the context dropped), or the error itself when
    /// there is none.
    pub(crate) fn into_http(self) -> Result<HttpError, HubError> {
        match self {
            HubError::Http(http) => Ok(http),
            HubError::Context { context, inner } => {
                inner.into_http().map_err(|inner| HubError::Context {
                    context,
                    inner: Box::new(inner),
                })
            }
            other => Err(other),
        }
    }
}

/// `.with_context(...)` for results whose error converts into [`HubError`].
pub(crate) trait ResultExt<T> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, HubError>;
}

impl<T> ResultExt<T> for Result<T, io::Error> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, HubError> {
        self.map_err(|source| HubError::Io {
            context: context().into(),
            source,
        })
    }
}

impl<T> ResultExt<T> for Result<T, HubError> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, HubError> {
        self.map_err(|e| e.context(context()))
    }
}

impl<T> ResultExt<T> for Result<T, serde_json::Error> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, HubError> {
        self.map_err(|source| HubError::Json {
            context: context().into(),
            source,
        })
    }
}
