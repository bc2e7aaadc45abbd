//! `vasticlaude sim serve`: the first line names the URL, only the configured key is accepted
//! (others get Vast's 404 auth_error), and a bad config file is a one-line usage error.
//!
//! Uses the built binary `<workspace>/target/debug/vasticlaude` (`cargo build -p cli`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join("target/debug/vasticlaude")
}

/// One HTTP/1.1 request; returns (status, body).
fn request(port: u16, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sim_serve_prints_its_url_and_checks_the_key() {
    let bin = binary();
    if !tests::require(
        "vasticlaude binary",
        bin.is_file(),
        &format!("{} not built (cargo build -p cli)", bin.display()),
    ) {
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let mut child = Child(
        Command::new(&bin)
            .args([
                "sim",
                "serve",
                "--port",
                "0",
                "--seed",
                "7",
                "--api-key",
                "k-123",
                "--ssh-port",
                "2222",
            ])
            .arg("--root")
            .arg(root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vasticlaude sim serve"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    let port: u16 = first
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("first line is not the URL: {first:?}"));
    assert_ne!(port, 0);

    let (status, body) = request(port, "GET", "/api/v0/users/current/", Some("sim"), "");
    assert_eq!(
        status, 404,
        "the default key is not accepted when --api-key is given: {body}"
    );
    assert!(
        body.contains("\"Invalid user key\"") && body.contains("\"auth_error\""),
        "{body}"
    );
    let (status, body) = request(port, "GET", "/api/v0/users/current", None, "");
    assert_eq!(status, 403, "{body}");
    let (status, body) = request(port, "GET", "/api/v0/users/current", Some("k-123"), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"credit\""), "{body}");
    let (status, body) = request(
        port,
        "POST",
        "/api/v0/bundles/",
        Some("k-123"),
        r#"{"num_gpus":{"eq":"1"},"limit":2}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["offers"].as_array().map(Vec::len), Some(2));

    // An instance's SSH fields point at 127.0.0.1 and --ssh-port; its folder is under --root.
    let offer = v["offers"][0]["id"].as_u64().expect("offer id");
    let (status, body) = request(
        port,
        "PUT",
        &format!("/api/v0/asks/{offer}/"),
        Some("k-123"),
        r#"{"client_id":"me","image":"img","disk":10}"#,
    );
    assert_eq!(status, 200, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = created["new_contract"].as_u64().expect("new_contract");
    let (status, body) = request(
        port,
        "GET",
        &format!("/api/v0/instances/{id}/"),
        Some("k-123"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let inst: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        inst["instances"]["ssh_host"],
        serde_json::json!("127.0.0.1")
    );
    assert_eq!(inst["instances"]["ssh_port"], serde_json::json!(2222));
    assert!(
        root.path()
            .join("instances")
            .join(id.to_string())
            .join("pids")
            .is_dir()
    );
}

#[test]
fn sim_serve_rejects_a_bad_config_in_one_line() {
    let bin = binary();
    if !tests::require(
        "vasticlaude binary",
        bin.is_file(),
        &format!("{} not built (cargo build -p cli)", bin.display()),
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("sim.toml");
    std::fs::write(&cfg, "seed = 1\n[faults]\nexited = 3.0\n").expect("write config");
    let out = Command::new(&bin)
        .args(["sim", "serve", "--port", "0", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "a bad config is a usage error");
    assert!(out.stdout.is_empty(), "nothing is served or printed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("faults.exited") && err.contains('3'),
        "names the field and value: {err}"
    );
}
