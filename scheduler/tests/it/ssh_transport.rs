//! The SSH transport against a real OpenSSH server on loopback, started by the fixture with
//! generated keys (rust-notes §3): commands with exit status, copies both ways with rsync and
//! with the tar fallback, concurrency below MaxSessions, reconnecting after the master dies, and
//! a reverse tunnel carrying heartbeats from an agent started over SSH to a collector here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scheduler::transport::ssh::{SshConfig, SshTransport, ensure_keypair};
use scheduler::transport::{DeployOptions, Transport, deploy};
use worker_agent::protocol::JobState;

use crate::agent_e2e::{TestCollector, agent_or_skip, spec, wait_for};

/// A throw-away sshd on 127.0.0.1:<free port>, killed on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub key: PathBuf,
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Sshd {
    pub async fn start() -> Result<Sshd, String> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err("/usr/sbin/sshd not installed (apt-get install -y openssh-server)".into());
        }
        if sh("id -u")?.trim() != "0" {
            return Err("the sshd fixture runs sshd as root; not root here".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {}/host_key",
            d.display()
        ))?;
        let key = d.join("client_key");
        ensure_keypair(&key).await.map_err(|e| e.to_string())?;
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\nUsePAM no\n\
             Subsystem sftp internal-sftp\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| e.to_string())?;
        sh(&format!("/usr/sbin/sshd -t -f {}/sshd_config", d.display()))?;
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        let s = Sshd {
            dir,
            port,
            key,
            child,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("sshd did not listen on {port}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(s)
    }

    pub fn transport(&self, name: &str) -> SshTransport {
        let mut cfg = SshConfig::new(
            "127.0.0.1",
            self.port,
            "root",
            self.key.clone(),
            self.dir.path().join(format!("instance-{name}")),
        );
        cfg.control_dir = self.dir.path().join(format!("ctl-{name}"));
        std::fs::create_dir_all(&cfg.control_dir).unwrap();
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.retries = 2;
        cfg.backoff_base = Duration::from_millis(200);
        SshTransport::new(cfg)
    }
}

async fn sshd_or_skip() -> Option<Sshd> {
    match Sshd::start().await {
        Ok(s) => Some(s),
        Err(why) => {
            crate::require("OpenSSH server", false, &why);
            None
        }
    }
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "alpha").unwrap();
    std::fs::write(root.join("sub/b.txt"), "beta").unwrap();
    std::fs::write(root.join(".gitignore"), "*.ckpt\nbuild/\n").unwrap();
    std::fs::write(root.join("model.ckpt"), "big").unwrap();
    std::fs::create_dir_all(root.join("build")).unwrap();
    std::fs::write(root.join("build/out.o"), "obj").unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/HEAD"), "ref").unwrap();
}

fn check_copied(dst: &Path) {
    assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "alpha");
    assert_eq!(
        std::fs::read_to_string(dst.join("sub/b.txt")).unwrap(),
        "beta"
    );
    assert!(!dst.join("model.ckpt").exists(), ".gitignore'd file copied");
    assert!(!dst.join("build").exists(), ".gitignore'd dir copied");
    assert!(!dst.join(".git").exists(), ".git copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_commands_and_copies_both_ways() {
    let Some(sshd) = sshd_or_skip().await else {
        return;
    };
    let t = sshd.transport("a");

    let out = t.run("echo hi; echo err >&2; exit 7").await.unwrap();
    assert_eq!(out.status, Some(7));
    assert_eq!(out.stdout_str(), "hi\n");
    assert_eq!(out.stderr_str(), "err\n");
    // The host key was pinned on first contact, in this instance's own file.
    let kh = std::fs::read_to_string(t.config().known_hosts()).unwrap();
    assert!(kh.contains(&format!("[127.0.0.1]:{}", sshd.port)), "{kh}");
    // Arguments with quotes and spaces survive.
    let out = t.run("printf '%s|' 'a b' \"it's\"").await.unwrap();
    assert_eq!(out.stdout_str(), "a b|it's|");

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let remote = work.path().join("remote/code");
    t.copy_up(&src, &remote.display().to_string())
        .await
        .unwrap();
    check_copied(&remote);
    let back = work.path().join("back");
    t.copy_down(&remote.display().to_string(), &back)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(back.join("sub/b.txt")).unwrap(),
        "beta"
    );
    // Single files.
    t.copy_up(
        &src.join("a.txt"),
        &work.path().join("remote/one/a.txt").display().to_string(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(work.path().join("remote/one/a.txt")).unwrap(),
        "alpha"
    );
    t.copy_down(
        &work.path().join("remote/one/a.txt").display().to_string(),
        &work.path().join("got/a.txt"),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(work.path().join("got/a.txt")).unwrap(),
        "alpha"
    );

    // The tar fallback for images without rsync.
    let t2 = sshd.transport("b");
    t2.assume_no_rsync();
    let remote2 = work.path().join("remote2/code");
    t2.copy_up(&src, &remote2.display().to_string())
        .await
        .unwrap();
    check_copied(&remote2);
    let back2 = work.path().join("back2");
    t2.copy_down(&remote2.display().to_string(), &back2)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(back2.join("a.txt")).unwrap(),
        "alpha"
    );
    t2.copy_up(
        &src.join("a.txt"),
        &work.path().join("remote2/f.txt").display().to_string(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(work.path().join("remote2/f.txt")).unwrap(),
        "alpha"
    );
    t.close().await;
    t2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_survives_more_concurrent_commands_than_max_sessions_and_a_dead_master() {
    let Some(sshd) = sshd_or_skip().await else {
        return;
    };
    let t = std::sync::Arc::new(sshd.transport("c"));
    let mut tasks = Vec::new();
    for i in 0..15 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            t.run(&format!("sleep 0.3; echo {i}")).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.stdout_str().trim(), i.to_string());
    }
    // Kill the master behind the transport's back; the next command reconnects.
    let ctl = sh(&format!(
        "ls -d {}/.ssh-connection*/master",
        t.config().control_dir.display()
    ))
    .unwrap();
    sh(&format!("ssh -S {} -O exit x", ctl.trim())).unwrap();
    let out = t.run("echo back").await.unwrap();
    assert_eq!(out.stdout_str(), "back\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_tunnel_carries_heartbeats_from_an_agent_started_over_ssh() {
    let Some(agent) = agent_or_skip() else { return };
    let Some(sshd) = sshd_or_skip().await else {
        return;
    };
    let t = sshd.transport("d");
    let c = TestCollector::start().await;
    let token = c.add_attempt(71, 1);
    let remote_port = free_port();
    let tunnel = t.reverse_tunnel(remote_port, c.addr).await.unwrap();
    assert_eq!(tunnel.http_url(), format!("http://127.0.0.1:{remote_port}"));

    let root = tempfile::tempdir().unwrap();
    let job_dir = root.path().join("job71");
    let s = spec(
        &job_dir,
        71,
        "for i in 1 2 3 4 5; do echo step $i/5; sleep 0.2; done",
        &tunnel.http_url(),
        &token,
    );
    let opts = DeployOptions {
        remote_root: root.path().join("vc").display().to_string(),
    };
    let store = c.store.clone();
    let wait = move |_d| async move {
        let start = Instant::now();
        while store.heartbeats(71).is_empty() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("no heartbeat within 20 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    };
    let dep = deploy(&t, &agent, &s, None, &opts, wait).await.unwrap();
    assert!(dep.agent_copied);
    wait_for(
        "final heartbeat through the tunnel",
        Duration::from_secs(30),
        || {
            c.store
                .latest_heartbeat(71)
                .is_some_and(|h| h.state == JobState::Exited)
        },
    )
    .await;
    let last = c.store.latest_heartbeat(71).unwrap();
    assert_eq!(last.exit.unwrap().code, Some(0));
    assert_eq!(
        (last.progress.step, last.progress.total),
        (Some(5), Some(5))
    );
    let n = c.store.heartbeats(71).len() as u64;
    assert_eq!(c.store.arrival_order(71), (1..=n).collect::<Vec<_>>());
    // The agent outlived the SSH command that started it, in its own session.
    let out = t.run(&format!("cat {}", dep.status_path())).await.unwrap();
    assert!(
        out.stdout_str().contains("\"exited\""),
        "{}",
        out.stdout_str()
    );
    t.close().await;
}
