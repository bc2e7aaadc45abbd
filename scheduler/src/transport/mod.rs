//! Transports: how the scheduler reaches an instance.
//!
//! One small async trait, [`Transport`], with two implementations:
//! - [`ssh::SshTransport`]: the system OpenSSH client through the `openssh` crate (one
//!   multiplexed master per instance), rsync over that master (tar where the image has none),
//!   and a reverse tunnel so agents reach a collector behind NAT on the instance's loopback.
//! - [`local::LocalTransport`]: the simulator's instances are folders on this machine and their
//!   commands are local processes.
//!
//! [`deploy`] puts the agent, its spec and the code on an instance and starts it, through either.
//!
//! The trait returns boxed futures so that the reconciler can hold `Arc<dyn Transport>` for a
//! mix of instances.

pub mod deploy;
pub mod local;
pub mod ssh;

use std::net::SocketAddr;
use std::path::Path;

use futures::future::BoxFuture;

pub use deploy::{DeployError, DeployOptions, Deployment, deploy};
pub use local::LocalTransport;
pub use ssh::{SshConfig, SshTransport};

/// What a command on the instance returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when a signal ended it.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Where a program on the instance reaches the address a reverse tunnel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelEndpoint {
    pub host: String,
    pub port: u16,
}

impl TunnelEndpoint {
    /// `http://host:port`, for a job spec's collector URL.
    pub fn http_url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

/// What went wrong talking to an instance. Messages name the instance and the operation.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {target}: {why}")]
    Connect { target: String, why: String },
    #[error("{op} on {target} failed: {why}")]
    Failed {
        target: String,
        op: String,
        why: String,
    },
    #[error("{op} on {target}: local I/O error: {source}")]
    Io {
        target: String,
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the scheduler talks to one instance.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// A short name for messages (`ssh root@1.2.3.4:22`, `local /tmp/sim/i-7`).
    fn describe(&self) -> String;

    /// Run `command` with `sh -c` on the instance.
    fn run<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<CommandOutput, TransportError>>;

    /// Copy a local file or directory to the instance path `remote` (unmapped: the same string
    /// [`Transport::remote_path`] takes). A directory's contents land in `remote`
    /// (created if needed), skipping what its `.gitignore` files exclude and `.git` itself.
    fn copy_up<'a>(
        &'a self,
        local: &'a Path,
        remote: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Copy the instance path `remote` (unmapped) to `local` (a directory's contents land in
    /// `local`).
    fn copy_down<'a>(
        &'a self,
        remote: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Make `remote_port` on the instance's loopback reach `local` on this machine. Returns where
    /// programs on the instance connect.
    fn reverse_tunnel<'a>(
        &'a self,
        remote_port: u16,
        local: SocketAddr,
    ) -> BoxFuture<'a, Result<TunnelEndpoint, TransportError>>;

    /// The path programs on the instance see for the instance path `path` (identity over SSH;
    /// under the instance folder for the local transport).
    fn remote_path(&self, path: &str) -> String;
}

/// Quote a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c.txt"), "/a/b-c.txt");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
