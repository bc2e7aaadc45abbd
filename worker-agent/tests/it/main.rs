//! The agent binary's command line. (The end-to-end runs against a real collector live in
//! `scheduler/tests/it/agent_e2e.rs`, where the collector is; building this test target also
//! builds `target/debug/vasticlaude-agent` for them under `cargo test --workspace`.)

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_vasticlaude-agent");

#[test]
fn version_names_the_protocol() {
    let out = Command::new(AGENT).arg("version").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(&format!("protocol {}", worker_agent::PROTOCOL_VERSION)),
        "{s}"
    );
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    for args in [&["frobnicate"][..], &["start"], &["run", "--spec"], &[]] {
        let out = Command::new(AGENT).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = Command::new(AGENT)
        .args(["start", "--spec", "/nonexistent/spec.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/spec.json"));
}

#[test]
fn gpu_sample_degrades_without_nvidia_smi() {
    let out = Command::new(AGENT)
        .arg("gpu-sample")
        .env("VASTICLAUDE_NVIDIA_SMI", "/nonexistent/nvidia-smi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["available"], false);
    assert!(v["error"].as_str().unwrap().contains("not found"), "{v}");
}
