//! `vast::sim` over HTTP: the official `vastai` CLI (PyPI `vastai==1.9.1`) pointed at the sim
//! with `--url` must work unchanged, and the raw HTTP surface must answer with Vast's shapes.
//!
//! The CLI is found through `VASTAI_BIN`, then `<workspace>/.venv/bin/vastai`, then `PATH`.
//! Each CLI run gets its own HOME and XDG folders so nothing leaks between runs or into the
//! user's real configuration.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vast::sim::{BootTimes, Market, RateLimitBody, SimConfig};

use crate::require;

/// A sim server on 127.0.0.1:<free port>, following the wall clock, in a background thread.
pub struct SimServer {
    pub url: String,
    pub market: Arc<Mutex<Market>>,
    _root: tempfile::TempDir,
}

pub fn sim_config(seed: u64) -> SimConfig {
    let mut c = SimConfig::with_seed(seed);
    c.boot = BootTimes::fast();
    // No other renters: offers stay put between a search and a create in these tests.
    c.churn.arrivals_per_hour = 0.0;
    c
}

pub fn start_sim(mut config: SimConfig) -> SimServer {
    let root = tempfile::tempdir().expect("temp dir");
    config.root_dir = Some(root.path().to_path_buf());
    config.start_ms = Some(vast::sim::server::wall_ms());
    let market = Arc::new(Mutex::new(Market::new(config)));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let port = std_listener.local_addr().expect("addr").port();
    let m = market.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            let _ = vast::sim::server::serve(listener, m, true).await;
        });
    });
    SimServer {
        url: format!("http://127.0.0.1:{port}"),
        market,
        _root: root,
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The official CLI, or why it is missing.
pub fn vastai_bin() -> Result<PathBuf, String> {
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
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("vastai");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(format!(
        "no vastai in VASTAI_BIN, {} or PATH (python3 -m venv .venv && .venv/bin/pip install vastai==1.9.1)",
        venv.display()
    ))
}

pub struct VastCli {
    bin: PathBuf,
    url: String,
    home: tempfile::TempDir,
}

impl VastCli {
    pub fn new(bin: PathBuf, url: &str) -> Self {
        Self {
            bin,
            url: url.to_string(),
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        Command::new(&self.bin)
            .args(["--url", &self.url, "--api-key", "sim"])
            .args(args)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            // The CLI fetches GPU names from VAST_URL at import time: keep that on the sim too.
            .env("VAST_URL", &self.url)
            .env("VASTAI_NO_UPDATE_CHECK", "1")
            .env_remove("VAST_API_KEY")
            .output()
            .expect("run vastai")
    }

    /// Runs with `--raw`, expects success and JSON on stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a: Vec<&str> = args.to_vec();
        a.push("--raw");
        let out = self.run(&a);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "vastai {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("vastai {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// Runs and returns stdout, expecting success.
    pub fn text(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vastai {args:?} failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_status(&self, id: u64, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let inst = self.json(&["show", "instance", &id.to_string()]);
            if inst["actual_status"] == json!(want) {
                return inst;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} never reached {want}: {inst}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn official_cli_drives_the_sim() {
    let bin = vastai_bin();
    if !require(
        "vastai CLI",
        bin.is_ok(),
        bin.as_ref().err().map(String::as_str).unwrap_or(""),
    ) {
        return;
    }
    let sim = start_sim(sim_config(7));
    let cli = VastCli::new(bin.expect("checked"), &sim.url);

    // search: every offer satisfies the query, in ascending dph_total.
    let offers = cli.json(&[
        "search",
        "offers",
        "gpu_ram>=24 num_gpus=1 dph<2",
        "-o",
        "dph",
    ]);
    let offers = offers.as_array().expect("a list of offers").clone();
    assert!(offers.len() >= 20, "too few offers: {}", offers.len());
    let mut last = 0.0;
    for o in &offers {
        assert!(num(&o["gpu_ram"]) >= 24_000.0, "gpu_ram {}", o["gpu_ram"]);
        assert_eq!(o["num_gpus"], json!(1));
        let d = num(&o["dph_total"]);
        assert!(d < 2.0 && d >= last, "dph_total {d} after {last}");
        assert_eq!(
            o["verification"],
            json!("verified"),
            "CLI default verified=true"
        );
        assert_eq!(o["rentable"], json!(true));
        last = d;
    }

    // create on-demand, then watch it boot.
    let offer_id = offers[0]["id"].as_u64().expect("offer id");
    let created = cli.json(&[
        "create",
        "instance",
        &offer_id.to_string(),
        "--image",
        "pytorch/pytorch",
        "--disk",
        "10",
        "--label",
        "vc-cli",
    ]);
    assert_eq!(created["success"], json!(true), "{created}");
    let id = created["new_contract"].as_u64().expect("new_contract");
    let ids = id.to_string();
    let running = cli.wait_status(id, "running");
    assert_eq!(running["intended_status"], json!("running"));
    assert_eq!(running["label"], json!("vc-cli"));
    assert_eq!(running["is_bid"], json!(false));
    assert_eq!(running["ports"]["22/tcp"][0]["HostPort"], json!("22"));
    assert_eq!(running["ssh_host"], json!("127.0.0.1"));
    assert_eq!(running["disk_space"], json!(10.0));
    assert!(
        num(&running["duration"]) >= 0.0,
        "the CLI computes duration from start_date"
    );
    let listed = cli.json(&["show", "instances"]);
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .any(|i| i["id"] == json!(id))
    );
    // The offer is rented now: a single-GPU machine's offer disappears, others lose a GPU.
    let again = cli.json(&[
        "search",
        "offers",
        "gpu_ram>=24 num_gpus=1 dph<2",
        "-o",
        "dph",
    ]);
    let frac = num(&offers[0]["gpu_frac"]);
    if frac == 1.0 {
        assert!(
            !again
                .as_array()
                .expect("list")
                .iter()
                .any(|o| o["id"] == json!(offer_id))
        );
    }

    // stop: every state field reads stopped, ports gone.
    assert!(
        cli.text(&["stop", "instance", &ids])
            .contains(&format!("stopping instance {id}"))
    );
    let stopped = cli.json(&["show", "instance", &ids]);
    for k in [
        "actual_status",
        "intended_status",
        "cur_state",
        "next_state",
    ] {
        assert_eq!(stopped[k], json!("stopped"), "{k}: {stopped}");
    }
    assert_eq!(stopped["ports"], Value::Null);

    // start: back to running.
    assert!(
        cli.text(&["start", "instance", &ids])
            .contains(&format!("starting instance {id}"))
    );
    cli.wait_status(id, "running");

    // label.
    assert!(
        cli.text(&["label", "instance", &ids, "renamed"])
            .contains("renamed")
    );
    assert_eq!(
        cli.json(&["show", "instance", &ids])["label"],
        json!("renamed")
    );

    // logs: request_logs, then the CLI polls the result_url without auth.
    let logs = cli.text(&["logs", &ids]);
    assert!(
        logs.contains(&format!("created from offer {offer_id}")),
        "logs: {logs}"
    );
    assert!(logs.contains("stopped by user"), "logs: {logs}");

    // ssh key.
    let attach = cli.text(&[
        "attach",
        "ssh",
        &ids,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfakeKeyForTests test@sim",
    ]);
    assert!(attach.contains("'success': True"), "attach: {attach}");
    let keys = sim
        .market
        .lock()
        .expect("lock")
        .instance_ssh_keys(id)
        .expect("keys");
    assert!(keys.iter().any(|k| k.contains("OfakeKeyForTests")));

    // interruptible: --bid_price makes it a bid instance at that price.
    let bids = cli.json(&[
        "search",
        "offers",
        "gpu_ram>=24 num_gpus=1 dph<2",
        "-o",
        "dph",
        "--type",
        "bid",
    ]);
    let bids = bids.as_array().expect("bid offers");
    let b = bids
        .iter()
        .find(|o| o["id"] != json!(offer_id))
        .expect("another offer");
    assert_eq!(b["dph_base"], b["min_bid"], "bid view prices from min_bid");
    let bid = (num(&b["min_bid"]) * 1.2 * 10_000.0).round() / 10_000.0;
    let bid_created = cli.json(&[
        "create",
        "instance",
        &b["id"].to_string(),
        "--image",
        "img",
        "--bid_price",
        &bid.to_string(),
    ]);
    assert_eq!(bid_created["success"], json!(true), "{bid_created}");
    let bid_id = bid_created["new_contract"].as_u64().expect("new_contract");
    let bid_inst = cli.wait_status(bid_id, "running");
    assert_eq!(bid_inst["is_bid"], json!(true));
    assert_eq!(num(&bid_inst["dph_base"]), bid);
    // change bid.
    let changed = cli.text(&["change", "bid", &bid_id.to_string(), "--price", "0.77"]);
    assert!(changed.contains("bid price changed"), "{changed}");
    assert_eq!(
        num(&cli.json(&["show", "instance", &bid_id.to_string()])["dph_base"]),
        0.77
    );
    // A bid under min_bid: success false, yet an instance was created (stopped).
    let c = bids
        .iter()
        .find(|o| o["id"] != json!(offer_id) && o["id"] != b["id"])
        .expect("a third offer");
    let low = cli.json(&[
        "create",
        "instance",
        &c["id"].to_string(),
        "--image",
        "img",
        "--bid_price",
        "0.001",
    ]);
    assert_eq!(low["success"], json!(false), "{low}");
    let low_id = low["new_contract"]
        .as_u64()
        .expect("a too-low bid still creates an instance");
    let low_inst = cli.json(&["show", "instance", &low_id.to_string()]);
    assert_eq!(low_inst["actual_status"], json!("stopped"));
    assert_eq!(low_inst["intended_status"], json!("stopped"));

    // user: credit falls with spend; the CLI drops api_key.
    std::thread::sleep(Duration::from_millis(1200));
    let user = cli.json(&["show", "user"]);
    let credit = num(&user["credit"]);
    assert!(credit < 1000.0 && credit > 990.0, "credit {credit}");
    assert!(user.get("api_key").is_none(), "the CLI removes api_key");

    // charges: one row per contract, items gpu/disk/bwu/bwd, 3-decimal amounts.
    let charges = cli.json(&["show", "invoices-v1", "--charges"]);
    let results = charges["results"].as_array().expect("results");
    assert_eq!(charges["total"], json!(3), "{charges}");
    let row = results
        .iter()
        .find(|r| r["source"] == json!(format!("instance-{id}")))
        .expect("a row for the on-demand instance");
    let types: Vec<&str> = row["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["type"].as_str())
        .collect();
    assert_eq!(types, vec!["gpu", "disk", "bwu", "bwd"]);
    for item in row["items"]
        .as_array()
        .expect("items")
        .iter()
        .chain(std::iter::once(row))
    {
        let a = num(&item["amount"]);
        assert!(
            ((a * 1000.0).round() - a * 1000.0).abs() < 1e-6,
            "3 decimals: {a}"
        );
    }
    assert!(num(&row["items"][0]["amount"]) >= 0.0);
    assert_eq!(row["metadata"]["label"], json!("renamed"));
    let exact = sim
        .market
        .lock()
        .expect("lock")
        .charges(id)
        .expect("charges");
    assert!(
        num(&row["amount"])
            <= exact
                .total
                .round_dp(3)
                .to_string()
                .parse::<f64>()
                .unwrap_or(0.0)
                + 1e-9,
        "the feed never shows more than was charged"
    );

    // destroy: gone from show instance and show instances.
    for i in [id, bid_id, low_id] {
        cli.run(&["destroy", "instance", &i.to_string(), "-y"]);
    }
    assert_eq!(
        cli.json(&["show", "instance", &ids]),
        json!({"instances": null})
    );
    let gone = cli.run(&["show", "instance", &ids]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found or no longer exists"));
    assert_eq!(cli.json(&["show", "instances"]), json!([]));
}

#[test]
fn official_cli_sees_auth_errors() {
    let bin = vastai_bin();
    if !require(
        "vastai CLI",
        bin.is_ok(),
        bin.as_ref().err().map(String::as_str).unwrap_or(""),
    ) {
        return;
    }
    let mut config = sim_config(8);
    config.api_key = "right-key".into();
    let sim = start_sim(config);
    let cli = VastCli::new(bin.expect("checked"), &sim.url);
    // `cli` sends the key "sim", which this market does not accept.
    let out = cli.run(&["show", "user", "--raw"]);
    assert!(!out.status.success() || out.stdout.is_empty());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap_or(Value::Null);
    assert_eq!(
        err,
        json!({"error": true, "status_code": 404, "msg": "Invalid user key"})
    );
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_surface_matches_vast() {
    let sim = start_sim(sim_config(9));
    let c = http();
    let u = |p: &str| format!("{}{p}", sim.url);

    // Auth: none → 403, wrong → 404, Bearer or api_key query param → 200.
    let r = c
        .get(u("/api/v0/users/current/"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"success": false, "error": "auth_error", "msg": "This action requires login."})
    );
    let r = c
        .get(u("/api/v0/users/current/"))
        .bearer_auth("nope")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"success": false, "error": "auth_error", "msg": "Invalid user key"})
    );
    let r = c
        .get(u("/api/v0/users/current?api_key=sim"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = c
        .get(u("/api/v0/users/current"))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "no trailing slash works too");

    // The deprecated v0 list.
    let r = c
        .get(u("/api/v0/instances/"))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 410);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        json!("deprecated_endpoint")
    );

    // Search with and without slash, content type exactly application/json (the CLI checks).
    for path in ["/api/v0/bundles/", "/api/v0/bundles"] {
        let r = c
            .post(u(path))
            .bearer_auth("sim")
            .json(&json!({"num_gpus": {"eq": "2"}, "limit": 3}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["offers"].as_array().map(Vec::len), Some(3));
        assert!(
            v["offers"]
                .as_array()
                .expect("offers")
                .iter()
                .all(|o| o["num_gpus"] == json!(2))
        );
    }
    let r = c
        .post(u("/api/v0/bundles/"))
        .bearer_auth("sim")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);

    // Create errors and the single get of an unknown instance.
    let r = c
        .put(u("/api/v0/asks/1/"))
        .bearer_auth("sim")
        .json(&json!({"image": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        json!("no_such_ask")
    );
    let r = c
        .get(u("/api/v0/instances/12345/"))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"instances": null})
    );

    // v1 list: 25 per page and a cursor.
    let offers = sim
        .market
        .lock()
        .expect("lock")
        .search(&json!({"num_gpus": {"eq": 1}}))
        .expect("search");
    for o in offers.iter().take(27) {
        let r = c
            .put(u(&format!("/api/v0/asks/{}/", o["id"])))
            .bearer_auth("sim")
            .json(&json!({"client_id": "me", "image": "img", "disk": 10, "label": "page"}))
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.json::<Value>().await.expect("json")["success"],
            json!(true)
        );
    }
    let q = [
        (
            "select_filters",
            json!({"label": {"eq": "page"}}).to_string(),
        ),
        (
            "order_by",
            json!([{"col": "id", "dir": "desc"}]).to_string(),
        ),
        ("limit", "25".into()),
    ];
    let p1: Value = c
        .get(u("/api/v1/instances/"))
        .bearer_auth("sim")
        .query(&q)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(p1["instances"].as_array().map(Vec::len), Some(25));
    assert_eq!(p1["total_instances"], json!(27));
    let ids: Vec<u64> = p1["instances"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "order_by id desc");
    let token = p1["next_token"].as_str().expect("next_token").to_string();
    let mut q2 = q.to_vec();
    q2.push(("after_token", token));
    let p2: Value = c
        .get(u("/api/v1/instances"))
        .bearer_auth("sim")
        .query(&q2)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(p2["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(p2["next_token"], Value::Null);
    let bad = c
        .get(u("/api/v1/instances/"))
        .bearer_auth("sim")
        .query(&[(
            "select_filters",
            json!({"dph_total": {"lt": 1}}).to_string(),
        )])
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status(), 400);
    assert!(
        bad.json::<Value>().await.expect("json")["msg"]
            .as_str()
            .unwrap_or("")
            .contains("dph_total is not a valid search key")
    );

    // Logs: the result_url is served without auth.
    let id = ids[0];
    let r: Value = c
        .put(u(&format!("/api/v0/instances/request_logs/{id}/")))
        .bearer_auth("sim")
        .json(&json!({"tail": "100"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let url = r["result_url"].as_str().expect("result_url").to_string();
    let text = c
        .get(&url)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(text.contains("created from offer"), "{text}");

    // Charges need both day bounds.
    let r = c
        .get(u("/api/v0/charges/"))
        .bearer_auth("sim")
        .query(&[("select_filters", json!({"day": {"gte": 0}}).to_string())])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["msg"],
        json!("Must provide both 'day' gte and lte filters for instance charges")
    );

    // Destroy, then gone; destroying again is success:false.
    let r: Value = c
        .delete(u(&format!("/api/v0/instances/{id}/")))
        .bearer_auth("sim")
        .json(&json!({}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(r, json!({"success": true}));
    let r: Value = c
        .get(u(&format!("/api/v0/instances/{id}")))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(r, json!({"instances": null}));
    let r: Value = c
        .delete(u(&format!("/api/v0/instances/{id}/")))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(r["success"], json!(false));
    assert_eq!(r["error"], json!("no_such_instance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rate_limits_and_faults() {
    let mut config = sim_config(10);
    config.rate_limits.default_s = Some(30.0);
    config.rate_limits.body = RateLimitBody::Alternate;
    let sim = start_sim(config);
    let c = http();
    let url = format!("{}/api/v0/users/current/", sim.url);
    assert_eq!(
        c.get(&url)
            .bearer_auth("sim")
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let (mut text, mut detail) = (false, false);
    for _ in 0..12 {
        let r = c.get(&url).bearer_auth("sim").send().await.expect("send");
        assert_eq!(r.status(), 429);
        assert!(
            r.headers().get("retry-after").is_none(),
            "Vast sends no Retry-After"
        );
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("body");
        if ct.starts_with("text/plain") {
            assert!(body.starts_with("API requests too frequent"), "{body}");
            text = true;
        } else {
            let v: Value = serde_json::from_str(&body).expect("json 429");
            assert!(
                v["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("API requests too frequent")
            );
            detail = true;
        }
    }
    assert!(text && detail, "both 429 body styles appear");
    // Limits are per endpoint: another endpoint still answers.
    let r = c
        .get(format!("{}/api/v0/ssh/", sim.url))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    let mut config = sim_config(11);
    config.faults.http_5xx = 1.0;
    let sim = start_sim(config);
    let r = c
        .get(format!("{}/api/v0/users/current/", sim.url))
        .bearer_auth("sim")
        .send()
        .await
        .expect("send");
    assert!(
        [502, 503, 504].contains(&r.status().as_u16()),
        "{}",
        r.status()
    );
}

#[test]
fn official_cli_retries_through_sim_rate_limits() {
    let bin = vastai_bin();
    if !require(
        "vastai CLI",
        bin.is_ok(),
        bin.as_ref().err().map(String::as_str).unwrap_or(""),
    ) {
        return;
    }
    let mut config = sim_config(12);
    // Shorter than the CLI's two backoffs (0.15 s + 0.225 s): its third try gets through.
    config
        .rate_limits
        .per_endpoint_s
        .insert("GET /api/v0/users/current/".into(), 0.3);
    config.rate_limits.body = RateLimitBody::Text;
    let sim = start_sim(config);
    let cli = VastCli::new(bin.expect("checked"), &sim.url);
    // A fresh HOME: the CLI first asks users/current for the account role, then `show user`
    // asks again at once, which the limit answers with 429.
    let out = cli.run(&["--explain", "show", "user", "--raw"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the CLI retried through the 429s: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts = stdout.matches("GET http").count();
    assert!(
        attempts >= 3,
        "expected a retried request, saw {attempts} attempts:\n{stdout}"
    );
    let json_start = stdout.rfind("\n{").map(|i| i + 1).unwrap_or(0);
    let user: Value =
        serde_json::from_str(&stdout[json_start..]).expect("user JSON after the explain lines");
    assert!(num(&user["credit"]) > 0.0);
}
