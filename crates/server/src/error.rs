//! What can go wrong setting the server up: its configuration, its keys, its sockets, TLS.
//! (A refused join token is a [`crate::TokenError`], an answer to a client, not a failure.)

use std::fmt::Display;

/// Errors of the server runtime while it starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A file or socket could not be used.
    #[error("{what}: {source}")]
    Io {
        /// Which file or address, and what was being done.
        what: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file or flags are not valid.
    #[error("{0}")]
    Config(String),
    /// Key material could not be read or made.
    #[error("{0}")]
    Keys(String),
    /// The TLS certificate or key could not be loaded.
    #[error("{0}")]
    Tls(String),
}

/// Wraps an I/O error with what it was about.
pub(crate) fn io(what: impl Display) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io {
        what: what.to_string(),
        source,
    }
}
