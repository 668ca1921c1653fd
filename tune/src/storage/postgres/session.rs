//! One worker's connection to the study database, kept across server restarts, fail-overs and dropped networks: a
//! call that finds the connection lost reconnects with bounded backoff (100 ms doubling to 2 s, for at most the
//! session's patience) and runs again. The caller says what a repeat must check first: a transaction whose commit
//! may have reached the server before the connection broke (a claim, a finish) looks for its own mark before it
//! runs again, so a retry never claims a second trial or reports a finished trial as ended by someone else.

use std::str::FromStr;
use std::time::{Duration, Instant};

use postgres::Client;

use super::super::redact;
use super::tls;
use crate::{Error, Result};

/// How long a lost connection is retried before a call fails, unless `KILN_STORAGE_PATIENCE` (seconds) says
/// otherwise: long enough for a server restart or a managed database's fail-over.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(120);

/// The most `KILN_STORAGE_PATIENCE` may ask for (a day).
const MAX_PATIENCE_SECS: f64 = 86_400.0;

/// The first wait before reconnecting, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The patience `KILN_STORAGE_PATIENCE` sets, or the default; an unreadable value is an error naming it.
pub fn patience_from_environment() -> Result<Duration> {
    match std::env::var("KILN_STORAGE_PATIENCE") {
        Err(_) => Ok(DEFAULT_PATIENCE),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(secs) if (0.0..=MAX_PATIENCE_SECS).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
            _ => Err(Error::InvalidSetting {
                key: "KILN_STORAGE_PATIENCE".into(),
                reason: format!("'{text}' is not a number of seconds from 0 to {MAX_PATIENCE_SECS}"),
            }),
        },
    }
}

/// The server's own words for an error (severity and message), else the client's with its causes.
pub(crate) fn reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

/// Whether `e` means the connection is gone or the server is (re)starting, so that a new connection may succeed:
/// a closed connection, an I/O error, or SQLSTATE class 08 (connection exception) or 57P01–57P03 (the server
/// shutting down, crashed, or not yet accepting connections). Errors of the statement itself and refused
/// credentials are not: retrying them would only repeat them.
pub(crate) fn is_connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    if e.as_db_error().is_some() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Why a connection could not be opened.
pub(crate) enum ConnectError {
    /// The URL or its settings are wrong: trying again cannot help.
    Settings(String),
    /// The server refused or could not be reached.
    Server(postgres::Error),
}

/// Opens a connection: 10 s connect timeout unless the URL sets `connect_timeout`; without a password in the URL,
/// `PGPASSWORD`'s or the password file's ([`super::super::password`]); TLS as the URL's `sslmode` says
/// ([`tls`]).
pub(crate) fn open_client(url: &str) -> std::result::Result<Client, ConnectError> {
    let (url_for_client, tls_mode) = tls::TlsMode::split_from(url).map_err(ConnectError::Settings)?;
    let mut config = postgres::Config::from_str(&url_for_client).map_err(|e| ConnectError::Settings(reason(&e)))?;
    if config.get_password().is_none() {
        let target = super::super::password::Target::of(&config);
        if let Some(password) = target.and_then(|t| super::super::password::from_environment(&t)) {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("kiln");
    }
    tls_mode.connect(&config).map_err(|e| match e {
        tls::ConnectFailure::Settings(text) => ConnectError::Settings(text),
        tls::ConnectFailure::Server(e) => ConnectError::Server(e),
    })
}

/// [`open_client`] with the error as kiln's, naming the URL without its password.
pub(crate) fn connect(url: &str) -> Result<Client> {
    open_client(url).map_err(|e| Error::Storage {
        url: redact(url),
        reason: match e {
            ConnectError::Settings(text) => text,
            ConnectError::Server(e) => reason(&e),
        },
    })
}

/// Which run of a call this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    First,
    /// After the connection was lost during an earlier run, whose commit may or may not have happened.
    AfterLostConnection,
}

/// A connection that reconnects.
pub(crate) struct Session {
    url: String,
    client: Option<Client>,
    patience: Duration,
}

impl Session {
    /// Connects once: a server that cannot be reached at start is an error at once, so that a wrong URL is not
    /// retried for minutes.
    pub(crate) fn open(url: &str, patience: Duration) -> Result<Self> {
        Ok(Self { url: url.to_string(), client: Some(connect(url)?), patience })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The error for `e`, naming the URL without its password.
    pub(crate) fn error(&self, e: &postgres::Error) -> Error {
        Error::Storage { url: redact(&self.url), reason: reason(e) }
    }

    /// Runs `call` on the connection; where the connection is lost (before or during the call), reconnects with
    /// backoff and runs `call` again with [`Attempt::AfterLostConnection`], until it succeeds or the patience
    /// is spent. `call` must be safe to repeat: either idempotent, or checking at a repeat whether its first run
    /// committed.
    pub(crate) fn call<T>(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut Client, Attempt) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut attempt = Attempt::First;
        let mut backoff = FIRST_BACKOFF;
        let mut deadline = None;
        loop {
            let lost = match self.connected() {
                Ok(client) => match call(client, attempt) {
                    Ok(value) => {
                        if attempt == Attempt::AfterLostConnection {
                            eprintln!("storage {}: reconnected; {what} went through", redact(&self.url));
                        }
                        return Ok(value);
                    }
                    Err(e) if is_connection_lost(&e) => {
                        self.client = None;
                        reason(&e)
                    }
                    Err(e) => return Err(self.error(&e)),
                },
                Err(ConnectError::Server(e)) if is_connection_lost(&e) => reason(&e),
                Err(ConnectError::Server(e)) => return Err(self.error(&e)),
                Err(ConnectError::Settings(text)) => {
                    return Err(Error::Storage { url: redact(&self.url), reason: text })
                }
            };
            let deadline = *deadline.get_or_insert_with(|| {
                eprintln!(
                    "warning: storage {}: connection lost during {what} ({lost}); reconnecting for up to {:.0} s",
                    redact(&self.url),
                    self.patience.as_secs_f64()
                );
                Instant::now() + self.patience
            });
            attempt = Attempt::AfterLostConnection;
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Storage {
                    url: redact(&self.url),
                    reason: format!(
                        "{what}: the connection was lost and not re-established within {:.0} s (KILN_STORAGE_PATIENCE): \
                         {lost}",
                        self.patience.as_secs_f64()
                    ),
                });
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The open connection, reconnecting if there is none or it was closed.
    fn connected(&mut self) -> std::result::Result<&mut Client, ConnectError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(open_client(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}
