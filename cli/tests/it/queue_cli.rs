//! `vasticlaude queue` and `experiments` end to end, through the real binary, on SQLite (the
//! default under `$VASTICLAUDE_HOME`) and on PostgreSQL (`VASTICLAUDE_DATABASE_URL`).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vasticlaude");

fn vc(home: &Path, db_url: Option<&str>, user: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("VASTICLAUDE_HOME", home)
        .env("VASTICLAUDE_USER", user)
        .env_remove("VASTICLAUDE_DATABASE_URL");
    if let Some(url) = db_url {
        cmd.env("VASTICLAUDE_DATABASE_URL", url);
    }
    cmd.output().expect("run vasticlaude")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn list_json(home: &Path, db: Option<&str>) -> Vec<serde_json::Value> {
    let o = vc(
        home,
        db,
        "alice",
        &["queue", "list", "--experiment", "e1", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).expect("JSON array")
}

/// The "must show", plus duplicates, dry runs and permissions.
fn must_show(home: &Path, db: Option<&str>) {
    let add = [
        "queue",
        "add",
        "--experiment",
        "e1",
        "--gpu",
        "gpu_ram>=16",
        "--sweep",
        "lr=0.1,0.01",
        "--sweep",
        "seed=0,1,2",
        "--",
        "python",
        "train.py",
        "--lr",
        "{lr}",
        "--seed",
        "{seed}",
    ];
    let o = vc(home, db, "alice", &add);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("queued 6 job(s) in experiment e1"),
        "{}",
        stdout(&o)
    );

    let jobs = list_json(home, db);
    assert_eq!(jobs.len(), 6);
    let mut lines: Vec<String> = jobs
        .iter()
        .map(|j| j["command_line"].as_str().unwrap().to_string())
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "python train.py --lr 0.01 --seed 0",
            "python train.py --lr 0.01 --seed 1",
            "python train.py --lr 0.01 --seed 2",
            "python train.py --lr 0.1 --seed 0",
            "python train.py --lr 0.1 --seed 1",
            "python train.py --lr 0.1 --seed 2",
        ]
    );
    assert_eq!(
        jobs[0]["command"],
        serde_json::json!(["python", "train.py", "--lr", "0.1", "--seed", "0"])
    );
    assert_eq!(jobs[0]["name"], "lr=0.1,seed=0");
    assert_eq!(jobs[0]["owner"], "alice");
    assert_eq!(jobs[0]["state"], "queued");

    // A bad value: non-zero exit, a message naming key and value, nothing written.
    let o = vc(
        home,
        db,
        "alice",
        &[
            "queue",
            "add",
            "--experiment",
            "e1",
            "--sweep",
            "lr=",
            "--",
            "echo",
            "{lr}",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lr=\"\""), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "one line: {}", stderr(&o));
    for bad in [
        &[
            "queue",
            "add",
            "--experiment",
            "e1",
            "--gpu",
            "gpu_ram>=",
            "--",
            "x",
        ][..],
        &[
            "queue",
            "add",
            "--experiment",
            "e1",
            "--est-runtime",
            "soon",
            "--",
            "x",
        ],
        &[
            "queue",
            "add",
            "--experiment",
            "e1",
            "--sweep",
            "seed=5..1",
            "--",
            "x",
            "{seed}",
        ],
        &[
            "queue",
            "add",
            "--experiment",
            "e1",
            "--sweep",
            "a=1,2",
            "--",
            "x",
            "{b}",
        ],
    ] {
        let o = vc(home, db, "alice", bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
    assert_eq!(list_json(home, db).len(), 6, "still 6 jobs");

    // The identical sweep again adds nothing and says so.
    let o = vc(home, db, "alice", &add);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--allow-duplicates"), "{}", stdout(&o));
    assert_eq!(list_json(home, db).len(), 6);

    // --dry-run writes nothing.
    let mut dry = add.to_vec();
    dry.insert(2, "--dry-run");
    dry.insert(2, "--allow-duplicates");
    let o = vc(home, db, "alice", &dry);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing was written"));
    assert_eq!(list_json(home, db).len(), 6);

    // Only the owner cancels.
    let id = jobs[0]["id"].to_string();
    let o = vc(home, db, "bob", &["queue", "cancel", &id]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("permission denied: bob may not cancel"),
        "{}",
        stderr(&o)
    );
    let o = vc(home, db, "alice", &["queue", "cancel", &id, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["cancelled"], serde_json::json!([jobs[0]["id"]]));

    let o = vc(home, db, "alice", &["experiments", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let exps: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(exps[0]["name"], "e1");
    assert_eq!(exps[0]["jobs"], 6);
    assert_eq!(exps[0]["states"]["cancelled"], 1);
}

#[test]
fn queue_must_show_on_sqlite() {
    let home = tempfile::tempdir().unwrap();
    must_show(home.path(), None);
    assert!(
        home.path().join("state.db").exists(),
        "the default database lives in VASTICLAUDE_HOME"
    );
}

#[test]
fn queue_must_show_on_postgres() {
    let Some((_rt, db)) = crate::postgres_or_skip() else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    must_show(home.path(), Some(&db.url));
    assert!(
        !home.path().join("state.db").exists(),
        "PostgreSQL mode writes no SQLite file"
    );
    drop(db);
}

/// A sweep file with grid, random and fixed parameters, sampled reproducibly (dry run only).
#[test]
fn sweep_file_sampling_is_reproducible() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("sweep.toml");
    std::fs::write(
        &file,
        "[fixed]\nepochs = 3\n[grid]\nopt = [\"adam\", \"sgd\"]\n[random]\nlr = { log_uniform = [1e-5, 1e-1] }\nlayers = { int = [2, 8] }\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let args = [
        "queue",
        "add",
        "--experiment",
        "rs",
        "--sweep-file",
        f,
        "--sample",
        "5",
        "--seed",
        "7",
        "--dry-run",
        "--json",
        "--",
        "python",
        "t.py",
        "--opt",
        "{opt}",
        "--lr",
        "{lr}",
        "--layers",
        "{layers}",
        "--epochs",
        "{epochs}",
    ];
    let one = vc(home.path(), None, "alice", &args);
    assert!(one.status.success(), "{}", stderr(&one));
    let two = vc(home.path(), None, "alice", &args);
    assert_eq!(one.stdout, two.stdout, "same seed, same jobs");
    let v: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 5);
    for j in jobs {
        let argv: Vec<&str> = j["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(argv[argv.len() - 1], "3");
        let lr: f64 = argv[5].parse().unwrap();
        assert!((1e-5..=1e-1).contains(&lr), "{argv:?}");
        assert_eq!(j["env"]["lr"].as_str().unwrap(), argv[5]);
    }
    let other_seed: Vec<&str> = args
        .iter()
        .map(|a| if *a == "7" { "8" } else { a })
        .collect();
    let three = vc(home.path(), None, "alice", &other_seed);
    assert_ne!(one.stdout, three.stdout, "another seed, other jobs");
    assert!(
        !home.path().join("state.db").exists(),
        "a dry run opens no database"
    );

    // A random section without --sample is refused, naming the keys.
    let o = vc(
        home.path(),
        None,
        "alice",
        &["queue", "add", "--sweep-file", f, "--", "x"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--sample"), "{}", stderr(&o));
}
