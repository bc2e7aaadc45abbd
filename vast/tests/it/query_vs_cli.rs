//! Our offer query language against the official `vastai` CLI (1.9.1): for each query string and
//! option set, the CLI is pointed at a recording HTTP server and the body it POSTs to
//! /api/v0/bundles/ must equal `SearchRequest::to_body()` (as JSON values). Queries the CLI
//! refuses must be refused by us with the same message, and the CLI must have sent nothing.
//!
//! Each CLI run gets its own URL prefix (`--url http://127.0.0.1:P/case<N>`; the CLI appends
//! /api/v0/bundles/ to it), so runs can go in parallel and each body is tied to its case.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::Uri;
use futures::StreamExt;
use serde_json::{Value, json};
use vast::query::{OfferType, SearchRequest, parse_query_with_warnings};

/// Where the official CLI is: `VASTAI_BIN`, else `<workspace>/.venv/bin/vastai`, else PATH.
pub fn vastai_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VASTAI_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/vastai");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("vastai"))
            .find(|p| p.is_file())
    })
}

/// Everything the recording server saw: (case prefix, path, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

async fn record_bundles(
    State(seen): State<Seen>,
    Path(case): Path<String>,
    body: String,
) -> axum::Json<Value> {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    seen.lock()
        .unwrap()
        .push((case, "/api/v0/bundles/".into(), v));
    // axum's Json answers with Content-Type exactly "application/json", which the CLI demands.
    axum::Json(json!({"offers": []}))
}

async fn record_other(State(seen): State<Seen>, uri: Uri, body: String) -> axum::Json<Value> {
    let case = uri.path().split('/').nth(1).unwrap_or("").to_string();
    seen.lock()
        .unwrap()
        .push((case, uri.path().to_string(), Value::String(body)));
    axum::Json(json!({}))
}

async fn start_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/{case}/api/v0/bundles/",
            axum::routing::post(record_bundles),
        )
        .fallback(record_other)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// One comparison: a query string and the `search offers` options that go with it.
struct Case {
    query: &'static str,
    args: &'static [&'static str],
}

const fn q(query: &'static str) -> Case {
    Case { query, args: &[] }
}

const fn qa(query: &'static str, args: &'static [&'static str]) -> Case {
    Case { query, args }
}

/// Queries the CLI accepts.
const ACCEPTED: &[Case] = &[
    q(""),
    q("gpu_ram>=24 num_gpus=1 dph<2"),
    q("reliability > 0.95 num_gpus=1 gpu_ram >= 24 dph < 0.5"),
    q(
        r#"gpu_name in [RTX_4090,"RTX 3090"] geolocation notin [CN,VN] driver_version >= 535.86.05 duration>2 num_gpus in [1,2]"#,
    ),
    q("verified=any"),
    q("verified=false external=any rentable=?"),
    q("rentable=* num_gpus>=2"),
    q("cuda_vers>=12.0 cuda_vers<14.0"),
    q("gpu_name=RTX_4090"),
    q(r#"gpu_name="RTX_A6000""#),
    q("cpu_arch=x86_64"),
    q("compute_cap gte 800 compute_cap lt 900"),
    q("num_gpus neq 1"),
    q("num_gpus not eq 1"),
    q("num_gpus noteq 1"),
    q("geolocation not in [US,CA]"),
    q("geolocation nin [US]  geolocation in [DE]"),
    q("num_gpus == 4 gpu_max_temp lte 80 gpu_mem_bw gt 500"),
    q("gpu_total_ram>=80 cpu_ram>64.5"),
    q("dlperf_usd>10 flops_usd>5 display_active=false"),
    q("static_ip=true direct_port_count>=2"),
    q("inet_down>500 inet_up>=100.5 inet_down_cost<0.01 inet_up_cost<=0.02"),
    q("mystery_field=3 another=null"),
    q("rented=None"),
    q("disk_space>100 disk_bw>1000 pcie_bw>10"),
    q("gpu_ram=24 gpu_ram=any"),
    q("duration>=0.5"),
    q("driver_version=550.54.15"),
    q("driver_version>=550"),
    q("id=12345 machine_id!=7 host_id in [1,2,3]"),
    q("gpu_ram>=2e1"),
    q("min_bid<0.3 storage_cost<=0.2"),
    q("verification=verified ubuntu_version>=22.04"),
    q("reliability>0.99,"),
    q("num_gpus>=1   gpu_ram>8"),
    q("gpu_name in [RTX_4090 , RTX_3090]"),
    q("has_avx=1 vms_enabled=True"),
    q("gpu_frac>=0.5 gpu_max_power<400"),
    q("verified>0"),
    q("total_flops>100 cluster_id=any mobo_name=ROMED8-2T"),
    q("cpu_cores>=16 cpu_cores_effective>=8 cpu_ghz>3"),
    q("gpu_arch=nvidia pci_gen>=4 bw_nvlink>0"),
    qa("num_gpus=1", &["-o", "dph"]),
    qa("num_gpus=1", &["-o", "num_gpus,total_flops-"]),
    qa("", &["--order=-score,dlperf_usd+"]),
    qa("gpu_ram>=24", &["-o", "dph_total+,reliability-,"]),
    qa("num_gpus=1", &["--type", "bid"]),
    qa("num_gpus=1", &["-i"]),
    qa("num_gpus=1", &["--type", "interruptible"]),
    qa("num_gpus=1", &["-r"]),
    qa("num_gpus=1", &["--type", "reserved"]),
    qa("num_gpus=1", &["-b", "-d"]),
    qa("num_gpus=1", &["--limit", "10"]),
    qa("num_gpus=1", &["--limit", "0"]),
    qa("num_gpus=1", &["--storage", "50"]),
    qa("num_gpus=1", &["--storage", "7.5"]),
    qa("num_gpus=1", &["-n"]),
    qa("verified=any rentable=true", &["-n"]),
    qa(
        "gpu_ram>=24 num_gpus=1 dph<2",
        &[
            "-o",
            "dph",
            "--limit",
            "5",
            "--storage",
            "20",
            "--type",
            "bid",
        ],
    ),
];

/// Queries the CLI refuses (with "Error:  ..." or by crashing); nothing may be sent.
const REJECTED: &[Case] = &[
    q("gpu_ram=<5"),
    q("foo"),
    q("!!!"),
    q("gpu_ram=abc"),
    q("num_gpus>=any"),
    q("driver_version=5.3"),
    q("driver_version=1.2.3.4"),
    q("num_gpus in [,]"),
    q("gpu_name="),
    q("gpu_ram in [1,2]"),
    q("driver_version in [535.86.05]"),
    q("gpu_ram=inf"),
    q("num_gpus=>2"),
    q("num_gpus=1 &&"),
    q("num_gpus=1 @it's"),
    q("num_gpus=1 gpu-ram>3"),
    q("dph<1 gpu_name RTX_4090"),
];

/// Our request for the same arguments the CLI gets.
fn our_request(case: &Case) -> SearchRequest {
    let mut req = SearchRequest::new(case.query);
    let mut it = case.args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-o" | "--order" => req.order = it.next().unwrap().to_string(),
            "-t" | "--type" => req.kind = it.next().unwrap().parse::<OfferType>().unwrap(),
            "-i" | "-b" => req.kind = OfferType::Bid,
            "-r" => req.kind = OfferType::Reserved,
            "-d" => req.kind = OfferType::OnDemand,
            "--limit" => req.limit = Some(it.next().unwrap().parse().unwrap()),
            "--storage" => req.storage_gb = it.next().unwrap().parse().unwrap(),
            "-n" => req.no_default = true,
            o if o.starts_with("--order=") => req.order = o["--order=".len()..].to_string(),
            other => panic!("test case uses an option this test does not map: {other}"),
        }
    }
    req
}

struct CliRun {
    stdout: String,
    stderr: String,
}

async fn run_cli(
    bin: &PathBuf,
    base: &str,
    n: usize,
    case: &Case,
    home: &std::path::Path,
) -> CliRun {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--url")
        .arg(format!("{base}/case{n}"))
        .arg("--api-key")
        .arg("k")
        .arg("search")
        .arg("offers")
        .args(case.args)
        .arg(case.query)
        .arg("--raw")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("VAST_URL")
        .env_remove("VAST_API_KEY")
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("vastai did not finish in 120 s")
        .expect("cannot run vastai");
    CliRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The CLI's reason for refusing: the text after `Error:  ` on stdout, or the message of the
/// exception that ended its traceback.
fn cli_refusal(run: &CliRun) -> Option<String> {
    if let Some(line) = run.stdout.lines().find_map(|l| l.strip_prefix("Error:  ")) {
        return Some(line.to_string());
    }
    if run.stderr.contains("Traceback (most recent call last)") {
        let last = run.stderr.lines().rev().find(|l| !l.trim().is_empty())?;
        return Some(last.split_once(": ").map_or(last, |(_, m)| m).to_string());
    }
    None
}

fn cli_warnings(run: &CliRun) -> Vec<String> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("Warning: Unrecognized field"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_bodies_match_official_cli() {
    let bin = vastai_bin();
    if !crate::require(
        "vastai CLI",
        bin.is_some(),
        "set VASTAI_BIN or create .venv with `pip install vastai==1.9.1`",
    ) {
        return;
    }
    let bin = bin.unwrap();
    let home = tempfile::tempdir().unwrap();
    let (base, seen) = start_server().await;

    let cases: Vec<(usize, &Case)> = ACCEPTED.iter().chain(REJECTED).enumerate().collect();
    let runs: HashMap<usize, CliRun> = futures::stream::iter(cases.iter().map(|(n, case)| {
        let (bin, base, home) = (&bin, &base, home.path());
        async move { (*n, run_cli(bin, base, *n, case, home).await) }
    }))
    .buffer_unordered(6)
    .collect()
    .await;

    let seen = seen.lock().unwrap().clone();
    // Only searches count: on a first run the CLI may also look up the user, which is not part
    // of what is compared.
    let bodies_of = |n: usize| -> Vec<&(String, String, Value)> {
        seen.iter()
            .filter(|(c, path, _)| *c == format!("case{n}") && path == "/api/v0/bundles/")
            .collect()
    };

    let mut failures = Vec::new();
    let mut compared_ok = 0;
    let mut compared_err = 0;
    for (n, case) in &cases {
        let run = &runs[n];
        let label = format!("case{n} {:?} {:?}", case.query, case.args);
        let sent = bodies_of(*n);
        let ours = our_request(case).to_body_with_warnings();
        let accepted = *n < ACCEPTED.len();
        if accepted {
            if sent.len() != 1 {
                failures.push(format!(
                    "{label}: the CLI should have sent one search, it sent {sent:?}; stdout {:?} stderr {:?}",
                    run.stdout, run.stderr
                ));
                continue;
            }
            match ours {
                Ok((body, unknown)) => {
                    if body != sent[0].2 {
                        failures.push(format!(
                            "{label}: bodies differ\n  cli:  {}\n  ours: {}",
                            sent[0].2, body
                        ));
                    }
                    let our_warnings = parse_query_with_warnings(case.query)
                        .map(|p| p.warnings())
                        .unwrap_or_default();
                    if our_warnings != cli_warnings(run) {
                        failures.push(format!(
                            "{label}: warnings differ: cli {:?} ours {our_warnings:?} ({unknown:?})",
                            cli_warnings(run)
                        ));
                    }
                    compared_ok += 1;
                }
                Err(e) => failures.push(format!("{label}: the CLI accepted it, we refused: {e}")),
            }
        } else {
            if !sent.is_empty() {
                failures.push(format!(
                    "{label}: the CLI should have sent nothing, it sent {sent:?}"
                ));
            }
            let Some(reason) = cli_refusal(run) else {
                failures.push(format!(
                    "{label}: no refusal found in the CLI output: stdout {:?} stderr {:?}",
                    run.stdout, run.stderr
                ));
                continue;
            };
            match ours {
                Ok((body, _)) => failures.push(format!(
                    "{label}: the CLI refused it ({reason}), we accepted: {body}"
                )),
                Err(e) if e.to_string() != reason => failures.push(format!(
                    "{label}: refusal messages differ\n  cli:  {reason}\n  ours: {e}"
                )),
                Err(_) => compared_err += 1,
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(compared_ok, ACCEPTED.len());
    assert_eq!(compared_err, REJECTED.len());
    assert!(
        compared_ok >= 30,
        "at least 30 accepted query strings are compared"
    );
    eprintln!(
        "compared {compared_ok} accepted and {compared_err} refused queries with {}",
        bin.display()
    );
}
