//! `vasticlaude run --provider sim` shows its work in the store: afterwards `queue list` has
//! the final states and `queue show` the whole lifecycle (events, attempts on instances).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vasticlaude");

fn agent() -> Option<PathBuf> {
    let beside = Path::new(BIN).with_file_name("vasticlaude-agent");
    if beside.is_file() {
        return Some(beside);
    }
    worker_agent::locate_agent_binary()
}

fn vc(home: &Path, db_url: Option<&str>, agent: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("VASTICLAUDE_HOME", home)
        .env("VASTICLAUDE_USER", "alice")
        .env("VASTICLAUDE_AGENT", agent)
        .env_remove("VASTICLAUDE_WORKSPACE")
        .env_remove("VASTICLAUDE_DATABASE_URL");
    if let Some(url) = db_url {
        cmd.env("VASTICLAUDE_DATABASE_URL", url);
    }
    cmd.output().expect("run vasticlaude")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

fn run_shows_the_lifecycle(db: Option<&str>) {
    let Some(agent) = agent() else {
        crate::require(
            "vasticlaude-agent binary",
            false,
            "build it with `cargo build -p worker-agent`",
        );
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let add = vc(
        home.path(),
        db,
        &agent,
        &[
            "queue",
            "add",
            "--experiment",
            "m1",
            "--sweep",
            "x=1,2",
            "--",
            "sh",
            "-c",
            "echo x={x}",
        ],
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let run = vc(home.path(), db, &agent, &["run", "--provider", "sim"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let list = json(&vc(
        home.path(),
        db,
        &agent,
        &["queue", "list", "--experiment", "m1", "--json"],
    ));
    let jobs = list.as_array().expect("array");
    assert_eq!(jobs.len(), 2, "{list:#}");
    for j in jobs {
        assert_eq!(j["state"], "succeeded", "{j:#}");
        assert_eq!(j["exit_code"], 0, "{j:#}");
        assert!(j["instance_id"].is_i64(), "{j:#}");
        let id = j["id"].as_i64().unwrap().to_string();
        let show = json(&vc(
            home.path(),
            db,
            &agent,
            &["queue", "show", &id, "--json"],
        ));
        let to: Vec<&str> = show["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["to_state"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            to,
            ["queued", "placed", "starting", "running", "succeeded"],
            "job {id}"
        );
        let attempts = show["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{show:#}");
        assert_eq!(attempts[0]["state"], "succeeded", "{show:#}");
        assert_eq!(attempts[0]["exit_status"], 0, "{show:#}");
        assert!(attempts[0]["ended_at"].is_i64(), "{show:#}");
        assert_eq!(attempts[0]["instance_id"], j["instance_id"], "{show:#}");
    }
}

#[test]
fn run_on_the_sim_leaves_the_lifecycle_in_sqlite() {
    run_shows_the_lifecycle(None);
}

#[test]
fn run_on_the_sim_leaves_the_lifecycle_in_postgres() {
    let Some((_rt, db)) = crate::postgres_or_skip() else {
        return;
    };
    run_shows_the_lifecycle(Some(&db.url));
    drop(db);
}

#[test]
fn a_bad_deadline_is_one_line_exit_2_and_nothing_written() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().join("home");
    let cases = [
        ("--finish-within", &["soon", "0h", "-3h", ""][..]),
        (
            "--finish-by",
            &["tomorrow", "2026-13-01T00:00:00Z", "2026-12-01"][..],
        ),
    ];
    for (flag, bads) in cases {
        for bad in bads {
            let o = Command::new(BIN)
                .args(["run", "--provider", "sim", "--once"])
                .arg(format!("{flag}={bad}"))
                .env("VASTICLAUDE_HOME", &home)
                .env_remove("VASTICLAUDE_DATABASE_URL")
                .output()
                .expect("run vasticlaude");
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{flag}={bad:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{flag}={bad:?}: {err}");
            assert!(err.contains(flag), "{flag}={bad:?}: {err}");
            assert!(!home.exists(), "{flag}={bad:?} left {}", home.display());
        }
    }
}
