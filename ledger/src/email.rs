//! Sending reports and alerts by email over SMTP (lettre).
//!
//! Configured by `VASTICLAUDE_SMTP_URL`:
//! - `smtp://[user:pass@]host[:port]` — port 25 by default; STARTTLS when the server offers it
//!   (`?tls=required` insists on it, `?tls=none` never tries);
//! - `smtps://[user:pass@]host[:port]` — TLS from the first byte, port 465 by default.
//!
//! and `VASTICLAUDE_EMAIL_FROM` (default `vasticlaude@localhost`). The credentials never appear
//! in `Debug` output or in errors: errors name the part of the URL that was wrong, not the URL.

use std::fmt;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// The environment variable holding the SMTP URL.
pub const SMTP_URL_ENV: &str = "VASTICLAUDE_SMTP_URL";
/// The environment variable holding the sender address.
pub const EMAIL_FROM_ENV: &str = "VASTICLAUDE_EMAIL_FROM";
/// The sender when `VASTICLAUDE_EMAIL_FROM` is not set.
pub const DEFAULT_FROM: &str = "vasticlaude@localhost";

/// Why an email could not be configured or sent.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("{SMTP_URL_ENV} is not set; set it to smtp://host:port or smtps://user:pass@host:port")]
    NotConfigured,
    #[error("{SMTP_URL_ENV} is invalid: {0}")]
    BadUrl(String),
    #[error("bad email address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot build the email: {0}")]
    Build(String),
    #[error("SMTP delivery to {host}:{port} failed: {reason}")]
    Send {
        host: String,
        port: u16,
        reason: String,
    },
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text only (`smtp://…?tls=none`). For loopback relays and tests.
    None,
    /// STARTTLS when the server offers it (`smtp://`).
    Opportunistic,
    /// STARTTLS or fail (`smtp://…?tls=required`).
    StartTls,
    /// Implicit TLS (`smtps://`).
    Wrapper,
}

/// Where and how to send. `Debug` redacts the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, EmailError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| EmailError::BadUrl(format!("bad percent-escape in the {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| EmailError::BadUrl(format!("the {what} is not UTF-8")))
}

impl SmtpConfig {
    /// Parses `smtp://` / `smtps://` URLs (see the module docs).
    pub fn from_url(url: &str) -> Result<Self, EmailError> {
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| EmailError::BadUrl("expected smtp://… or smtps://…".into()))?;
        let (mut security, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => (Security::Opportunistic, 25),
            "smtps" => (Security::Wrapper, 465),
            other => {
                return Err(EmailError::BadUrl(format!(
                    "unsupported scheme {other:?} (expected smtp or smtps)"
                )));
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                Some((
                    percent_decode(user, "user name")?,
                    percent_decode(pass, "password")?,
                ))
            }
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            // [IPv6]:port
            let (h, after) = stripped
                .split_once(']')
                .ok_or_else(|| EmailError::BadUrl("unclosed '[' in the host".into()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(EmailError::BadUrl("junk after the IPv6 host".into())),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(EmailError::BadUrl("the host is missing".into()));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| EmailError::BadUrl(format!("bad port {p:?}")))?,
        };
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("tls", v)) => {
                        security = match (security, v) {
                            (Security::Wrapper, _) => {
                                return Err(EmailError::BadUrl(
                                    "tls= is only for smtp:// (smtps:// always uses TLS)".into(),
                                ));
                            }
                            (_, "none") => Security::None,
                            (_, "opportunistic") => Security::Opportunistic,
                            (_, "required") => Security::StartTls,
                            (_, other) => {
                                return Err(EmailError::BadUrl(format!(
                                    "tls={other:?} (expected none, opportunistic or required)"
                                )));
                            }
                        }
                    }
                    _ => {
                        let key = pair.split('=').next().unwrap_or(pair);
                        return Err(EmailError::BadUrl(format!("unknown parameter {key:?}")));
                    }
                }
            }
        }
        Ok(SmtpConfig {
            host,
            port,
            security,
            credentials,
        })
    }

    /// Reads `VASTICLAUDE_SMTP_URL`; `Ok(None)` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>, EmailError> {
        match std::env::var(SMTP_URL_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::from_url(&v).map(Some),
            _ => Ok(None),
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, EmailError> {
        let params = || {
            TlsParameters::new(self.host.clone())
                .map_err(|e| EmailError::BadUrl(format!("TLS setup for {}: {e}", self.host)))
        };
        let tls = match self.security {
            Security::None => Tls::None,
            Security::Opportunistic => Tls::Opportunistic(params()?),
            Security::StartTls => Tls::Required(params()?),
            Security::Wrapper => Tls::Wrapper(params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(30)));
        if let Some((u, p)) = &self.credentials {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(b.build())
    }
}

/// Parses one address (`ops@example.com` or `Ops <ops@example.com>`).
pub fn parse_address(address: &str) -> Result<Mailbox, EmailError> {
    address
        .trim()
        .parse::<Mailbox>()
        .map_err(|e| EmailError::BadAddress {
            address: address.to_string(),
            reason: e.to_string(),
        })
}

/// The sender: `VASTICLAUDE_EMAIL_FROM`, else [`DEFAULT_FROM`].
pub fn from_env_or_default() -> String {
    std::env::var(EMAIL_FROM_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_FROM.to_string())
}

/// One email: plain text and HTML versions of the same content (multipart/alternative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A configured sender.
#[derive(Debug, Clone)]
pub struct Mailer {
    pub smtp: SmtpConfig,
    pub from: String,
}

impl Mailer {
    /// From `VASTICLAUDE_SMTP_URL` and `VASTICLAUDE_EMAIL_FROM`; an error when the URL is unset.
    pub fn from_env() -> Result<Self, EmailError> {
        let smtp = SmtpConfig::from_env()?.ok_or(EmailError::NotConfigured)?;
        let from = from_env_or_default();
        parse_address(&from)?;
        Ok(Mailer { smtp, from })
    }

    pub async fn send(
        &self,
        to: &[String],
        subject: &str,
        text: &str,
        html: &str,
    ) -> Result<(), EmailError> {
        send(
            &self.smtp,
            &Email {
                from: self.from.clone(),
                to: to.to_vec(),
                subject: subject.to_string(),
                text: text.to_string(),
                html: html.to_string(),
            },
        )
        .await
    }
}

/// Sends one email and waits for the server to accept it.
pub async fn send(config: &SmtpConfig, email: &Email) -> Result<(), EmailError> {
    if email.to.is_empty() {
        return Err(EmailError::Build("no recipient".into()));
    }
    let mut builder = Message::builder()
        .from(parse_address(&email.from)?)
        .subject(email.subject.clone());
    for to in &email.to {
        builder = builder.to(parse_address(to)?);
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| EmailError::Build(e.to_string()))?;
    let transport = config.transport()?;
    transport
        .send(message)
        .await
        .map_err(|e| EmailError::Send {
            host: config.host.clone(),
            port: config.port,
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Escapes text for HTML bodies.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_redacts_credentials() {
        let c = SmtpConfig::from_url("smtps://mailer:s3cr%40t@smtp.example.com").unwrap();
        assert_eq!(c.host, "smtp.example.com");
        assert_eq!(c.port, 465);
        assert_eq!(c.security, Security::Wrapper);
        assert_eq!(
            c.credentials,
            Some(("mailer".to_string(), "s3cr@t".to_string()))
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr"), "{dbg}");
        assert!(!dbg.contains("mailer"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");

        let c = SmtpConfig::from_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!((c.port, c.security), (2525, Security::Opportunistic));
        let c = SmtpConfig::from_url("smtp://u:p@[::1]:2525?tls=none").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.security),
            ("::1", 2525, Security::None)
        );
        let c = SmtpConfig::from_url("smtp://h?tls=required").unwrap();
        assert_eq!((c.port, c.security), (25, Security::StartTls));
    }

    #[test]
    fn bad_urls_name_the_problem_without_the_secret() {
        for (url, want) in [
            ("http://u:topsecret@h", "unsupported scheme"),
            ("smtp://u:topsecret@h:notaport", "bad port"),
            ("smtp://u:topsecret@", "host is missing"),
            ("smtp://u:topsecret@h?tls=maybe", "tls="),
            ("smtps://u:topsecret@h?tls=none", "only for smtp://"),
            ("u:topsecret@h", "expected smtp://"),
            ("smtp://u:top%zzsecret@h", "percent-escape in the password"),
        ] {
            let err = SmtpConfig::from_url(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("topsecret"), "{url}: {err}");
        }
    }

    #[test]
    fn escapes_html() {
        assert_eq!(html_escape("<a&b>\"'"), "&lt;a&amp;b&gt;&quot;&#39;");
    }
}
