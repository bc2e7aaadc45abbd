//! Must show: `vasticlaude offers search` and the official `vastai search offers` agree on the
//! simulated market, query for query: the same ids in the same order.
//!
//! Uses the built binary `<workspace>/target/debug/vasticlaude` (build it with
//! `cargo build -p cli`) and the official CLI from `VASTAI_BIN`, `.venv/bin/vastai` or `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use vast::sim::{BootTimes, Market, SimConfig};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn vastai_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VASTAI_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("VASTAI_BIN={} is not a file", p.display()))
        };
    }
    let venv = workspace_root().join(".venv/bin/vastai");
    if venv.is_file() {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("vastai"))
                .find(|c| c.is_file())
        })
        .ok_or_else(|| format!("no vastai in VASTAI_BIN, {} or PATH", venv.display()))
}

/// Serves a sim market (seed 7) on a free port in a background thread; returns its URL.
fn start_sim(root: &Path) -> String {
    let mut config = SimConfig::with_seed(7);
    config.boot = BootTimes::fast();
    config.churn.arrivals_per_hour = 0.0;
    config.root_dir = Some(root.to_path_buf());
    config.start_ms = Some(vast::sim::server::wall_ms());
    let market = Arc::new(Mutex::new(Market::new(config)));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = vast::sim::server::serve(l, market, true).await;
        });
    });
    format!("http://127.0.0.1:{port}")
}

fn ids(stdout: &[u8], what: &str) -> Vec<u64> {
    let v: Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    });
    let rows = match &v {
        Value::Array(a) => a.clone(),
        other => other
            .get("offers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    rows.iter()
        .map(|o| {
            o["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}: offer without id: {o}"))
        })
        .collect()
}

#[test]
fn offers_search_lists_what_the_official_cli_lists() {
    let vastai = vastai_bin();
    if !tests::require(
        "vastai CLI",
        vastai.is_ok(),
        vastai.as_ref().err().map(String::as_str).unwrap_or(""),
    ) {
        return;
    }
    let ours = workspace_root().join("target/debug/vasticlaude");
    if !tests::require(
        "vasticlaude binary",
        ours.is_file(),
        &format!("{} not built (cargo build -p cli)", ours.display()),
    ) {
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let url = start_sim(root.path());
    let home = tempfile::tempdir().expect("temp home");

    let cases: &[(&str, &str)] = &[
        ("gpu_ram>=24 num_gpus=1 dph<2", "dph"),
        ("num_gpus>=2 reliability>0.99", "dph_total"),
        (
            "gpu_name in [RTX_4090,RTX_3090] geolocation notin [CN,VN]",
            "dlperf_usd-",
        ),
        ("cuda_vers>=12.4 num_gpus=8", "score-"),
    ];
    for (query, order) in cases {
        let official = Command::new(vastai.as_ref().expect("checked"))
            .args([
                "--url",
                &url,
                "--api-key",
                "sim",
                "search",
                "offers",
                query,
                "-o",
                order,
                "--raw",
            ])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_CACHE_HOME", home.path().join(".cache"))
            .env("VAST_URL", &url)
            .env("VASTAI_NO_UPDATE_CHECK", "1")
            .env_remove("VAST_API_KEY")
            .output()
            .expect("run vastai");
        assert!(
            official.status.success(),
            "vastai failed: {}",
            String::from_utf8_lossy(&official.stderr)
        );
        let mine = Command::new(&ours)
            .args(["offers", "search", query, "--order", order, "--json"])
            .env("VAST_URL", &url)
            .env("VAST_API_KEY", "sim")
            .env("VASTICLAUDE_HOME", home.path().join(".vasticlaude"))
            .output()
            .expect("run vasticlaude");
        assert!(
            mine.status.success(),
            "vasticlaude failed: {}",
            String::from_utf8_lossy(&mine.stderr)
        );
        let a = ids(&official.stdout, "vastai");
        let b = ids(&mine.stdout, "vasticlaude");
        assert!(!a.is_empty(), "{query}: the sim lists offers");
        assert_eq!(b, a, "{query} -o {order}: same ids in the same order");
    }
}
