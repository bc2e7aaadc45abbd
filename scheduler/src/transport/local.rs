//! The local transport: a simulated instance is a folder on this machine.
//!
//! Instance paths map under the folder (`/workspace/x` → `<dir>/workspace/x`), commands run as
//! local processes with the folder as working directory.
//!
//! Contract with the simulator (`vast::sim`): every process group this transport starts is
//! announced as an empty file named after its pgid in `<dir>/pids/`, and the same directory is
//! passed on as `VASTICLAUDE_PID_DIR`, so the agent registers its own new session and its job's
//! group there too. The simulator SIGKILLs the listed groups when it stops, preempts or destroys
//! the instance — that is how a preemption looks to the agent: sudden death. A pgid file is
//! removed once its group is gone, so a recycled pgid can never be killed by mistake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures::future::BoxFuture;

use super::{CommandOutput, Transport, TransportError, TunnelEndpoint};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    root: PathBuf,
}

impl LocalTransport {
    /// The folder name, under the instance folder, of the pid files.
    pub const PID_DIR: &'static str = "pids";

    pub fn new(instance_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: instance_dir.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid_dir(&self) -> PathBuf {
        self.root.join(Self::PID_DIR)
    }

    fn map(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn io(&self, op: &str, source: std::io::Error) -> TransportError {
        TransportError::Io {
            target: self.describe(),
            op: op.to_string(),
            source,
        }
    }
}

/// True while any process is in group `pgid`.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence; it sends nothing.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Copy a file or a directory tree locally: rsync (with the same `.gitignore` filter as the
/// SSH transport) when installed, else a plain recursive copy that skips `.git`.
pub(crate) async fn copy_local(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = tokio::fs::metadata(from).await?;
    if !meta.is_dir() {
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::copy(from, to).await?;
        return Ok(());
    }
    tokio::fs::create_dir_all(to).await?;
    let rsync = tokio::process::Command::new("rsync")
        .arg("-a")
        .arg("--filter=:- .gitignore")
        .arg("--exclude=.git")
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .stdin(Stdio::null())
        .output()
        .await;
    match rsync {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(std::io::Error::other(format!(
            "rsync exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (from, to) = (from.to_path_buf(), to.to_path_buf());
            tokio::task::spawn_blocking(move || copy_tree(&from, &to))
                .await
                .map_err(std::io::Error::other)?
        }
        Err(e) => Err(e),
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        let ty = e.file_type()?;
        let dst = to.join(e.file_name());
        if ty.is_dir() {
            copy_tree(&e.path(), &dst)?;
        } else if ty.is_file() {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

impl Transport for LocalTransport {
    fn describe(&self) -> String {
        format!("local {}", self.root.display())
    }

    fn run<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
        Box::pin(async move {
            let pid_dir = self.pid_dir();
            std::fs::create_dir_all(&pid_dir).map_err(|e| self.io("create pid dir", e))?;
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&self.root)
                .env("VASTICLAUDE_PID_DIR", &pid_dir)
                .env("VASTICLAUDE_INSTANCE_ROOT", &self.root)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| self.io("run", e))?;
            let pgid = child.id().map(|p| p as i32);
            let pid_file = pgid.map(|g| pid_dir.join(g.to_string()));
            if let Some(f) = &pid_file {
                std::fs::File::create(f).map_err(|e| self.io("register pgid", e))?;
            }
            let out = child.wait_with_output().await;
            if let (Some(g), Some(f)) = (pgid, &pid_file)
                && !group_alive(g)
            {
                let _ = std::fs::remove_file(f);
            }
            let out = out.map_err(|e| self.io("run", e))?;
            Ok(CommandOutput {
                status: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        })
    }

    fn copy_up<'a>(
        &'a self,
        local: &'a Path,
        remote: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            copy_local(local, &self.map(remote))
                .await
                .map_err(|e| self.io("copy up", e))
        })
    }

    fn copy_down<'a>(
        &'a self,
        remote: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            copy_local(&self.map(remote), local)
                .await
                .map_err(|e| self.io("copy down", e))
        })
    }

    fn reverse_tunnel<'a>(
        &'a self,
        _remote_port: u16,
        local: SocketAddr,
    ) -> BoxFuture<'a, Result<TunnelEndpoint, TransportError>> {
        // The "instance" is this machine: it reaches the address directly.
        Box::pin(async move {
            Ok(TunnelEndpoint {
                host: local.ip().to_string(),
                port: local.port(),
            })
        })
    }

    fn remote_path(&self, path: &str) -> String {
        self.map(path).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_in_the_folder_and_registers_its_group() {
        let d = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(d.path());
        let out = t.run("pwd; echo err >&2; exit 3").await.unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(
            out.stdout_str().trim(),
            d.path().canonicalize().unwrap().display().to_string()
        );
        assert_eq!(out.stderr_str().trim(), "err");
        // The group is gone, so its pid file was removed again.
        assert_eq!(std::fs::read_dir(t.pid_dir()).unwrap().count(), 0);

        // A background process keeps its group alive: the file stays for the simulator.
        let out = t.run("sleep 30 >/dev/null 2>&1 & echo $$").await.unwrap();
        let pgid: i32 = out.stdout_str().trim().parse().unwrap();
        assert!(t.pid_dir().join(pgid.to_string()).exists());
        // SAFETY: test cleanup of the group we just started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }

    #[tokio::test]
    async fn maps_paths_and_copies_both_ways() {
        let d = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.txt"), "A").unwrap();
        std::fs::write(src.path().join(".gitignore"), "ignored.bin\n").unwrap();
        std::fs::write(src.path().join("ignored.bin"), "X").unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/b.txt"), "B").unwrap();
        let t = LocalTransport::new(d.path());
        assert_eq!(
            t.remote_path("/workspace/x"),
            d.path().join("workspace/x").display().to_string()
        );
        t.copy_up(src.path(), "/workspace/code").await.unwrap();
        let out = t
            .run("cat workspace/code/a.txt workspace/code/sub/b.txt")
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "AB");
        assert!(
            !d.path().join("workspace/code/ignored.bin").exists(),
            ".gitignore honoured"
        );
        let back = tempfile::tempdir().unwrap();
        t.copy_down("/workspace/code/sub", back.path())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(back.path().join("b.txt")).unwrap(),
            "B"
        );
    }
}
