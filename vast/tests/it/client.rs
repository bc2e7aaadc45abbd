//! The client against a small fake Vast server (axum on 127.0.0.1:0) that scripts each answer:
//! Vast's error shapes, retries (counted on the server), pagination, label filtering, tolerant
//! parsing, and the API key staying out of `Debug` and error text.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, Uri};
use serde_json::{Value, json};
use vast::client::{ApiKey, Pacing, RetryPolicy, VastClient, api_url, resolve_api_key_from};
use vast::error::VastError;
use vast::query::SearchRequest;
use vast::types::{CreateInstanceRequest, InstanceStatus};

const KEY: &str = "sk-test-SECRET-9f8e7d6c";

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    body: String,
    at: std::time::Instant,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded_parse(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Minimal query-string decoding (the test crate has no url dependency).
mod url {
    pub fn form_urlencoded_parse(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
}

/// A scripted answer.
struct Resp {
    status: u16,
    retry_after: Option<&'static str>,
    content_type: &'static str,
    body: String,
    delay: Duration,
}

fn ok(v: Value) -> Resp {
    status(200, v)
}

fn status(code: u16, v: Value) -> Resp {
    Resp {
        status: code,
        retry_after: None,
        content_type: "application/json",
        body: v.to_string(),
        delay: Duration::ZERO,
    }
}

fn text(code: u16, body: &str) -> Resp {
    Resp {
        status: code,
        retry_after: None,
        content_type: "text/plain",
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// (request, how many earlier requests had the same method and path) → answer.
type Responder = Arc<dyn Fn(&Req, usize) -> Resp + Send + Sync>;

#[derive(Clone)]
struct Fake {
    base: String,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
    fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }
}

#[derive(Clone)]
struct ServerState {
    log: Arc<Mutex<Vec<Req>>>,
    responder: Responder,
}

async fn handle(
    State(st): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response<Body> {
    let req = Req {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        auth: headers
            .get("authorization")
            .map(|h| h.to_str().unwrap().to_string()),
        body,
        at: std::time::Instant::now(),
    };
    let n = {
        let mut log = st.log.lock().unwrap();
        let n = log
            .iter()
            .filter(|r| r.method == req.method && r.path == req.path)
            .count();
        log.push(req.clone());
        n
    };
    let resp = (st.responder)(&req, n);
    if !resp.delay.is_zero() {
        tokio::time::sleep(resp.delay).await;
    }
    let mut builder = Response::builder()
        .status(resp.status)
        .header("content-type", resp.content_type);
    if let Some(ra) = resp.retry_after {
        builder = builder.header("retry-after", ra);
    }
    builder.body(Body::from(resp.body)).unwrap()
}

async fn fake(responder: impl Fn(&Req, usize) -> Resp + Send + Sync + 'static) -> Fake {
    let log: Arc<Mutex<Vec<Req>>> = Arc::default();
    let st = ServerState {
        log: log.clone(),
        responder: Arc::new(responder),
    };
    let app = Router::new().fallback(handle).with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fake {
        base: format!("http://{addr}"),
        log,
    }
}

fn client(base: &str) -> VastClient {
    VastClient::builder(base, ApiKey::new(KEY))
        .retry(RetryPolicy::immediate(3))
        .pacing(Pacing::none())
        .timeout(Duration::from_secs(5))
        .log_polling(5, Duration::from_millis(5))
        .destroy_verification(3, Duration::from_millis(5))
        .build()
        .unwrap()
}

fn assert_no_key(what: &str, text: &str) {
    assert!(!text.contains("SECRET"), "{what} leaks the API key: {text}");
}

#[tokio::test]
async fn search_sends_cli_body_with_bearer_and_keeps_raw_offers() {
    let f = fake(|_, _| {
        ok(json!({"offers": [
            {"id": 101, "num_gpus": "2", "gpu_name": "RTX 4090", "gpu_ram": 24564,
             "dph_total": "0.712", "min_bid": 0.31, "reliability2": 0.995,
             "geolocation": "Quebec, CA", "vendor_new_field": {"x": 1}},
            {"id": "102", "dph_total": 1.5},
            {"gpu_name": "no id, skipped"}
        ]}))
    })
    .await;
    let req = SearchRequest {
        query: "gpu_ram>=24 num_gpus=1 dph<2".into(),
        order: "dph".into(),
        ..SearchRequest::default()
    };
    let offers = client(&f.base).search_offers(&req).await.unwrap();

    let seen = f.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/api/v0/bundles/");
    assert_eq!(
        seen[0].auth.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        !seen[0].query.contains("SECRET"),
        "key must not travel in the URL"
    );
    assert_eq!(seen[0].json(), req.to_body().unwrap());

    assert_eq!(offers.len(), 2);
    assert_eq!(offers[0].id, 101);
    assert_eq!(offers[0].num_gpus, Some(2));
    assert_eq!(offers[0].dph_total, Some(0.712));
    assert_eq!(offers[0].country(), Some("CA"));
    assert_eq!(offers[1].id, 102);
    assert_eq!(offers[1].gpu_name, None);
    // --json prints Vast's own fields, unknown ones included.
    let printed = serde_json::to_value(&offers[0]).unwrap();
    assert_eq!(printed["vendor_new_field"], json!({"x": 1}));
    assert_eq!(printed["dph_total"], json!("0.712"));
}

#[tokio::test]
async fn refused_query_sends_nothing() {
    let f = fake(|_, _| ok(json!({"offers": []}))).await;
    let err = client(&f.base)
        .search_offers(&SearchRequest::new("gpu_ram=<5"))
        .await
        .unwrap_err();
    assert!(matches!(err, VastError::Query(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Unknown operator. Did you forget to quote your query? '=<'"
    );
    assert!(f.requests().is_empty());
}

#[tokio::test]
async fn success_false_with_http_200_is_an_error() {
    let f = fake(|_, _| {
        ok(json!({"success": false, "error": "invalid_state", "msg": "Instance is busy"}))
    })
    .await;
    let err = client(&f.base).stop_instance(42).await.unwrap_err();
    match &err {
        VastError::Failed {
            error, msg, path, ..
        } => {
            assert_eq!(error.as_deref(), Some("invalid_state"));
            assert_eq!(msg, "Instance is busy");
            assert_eq!(path, "/instances/42/");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let r = &f.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/api/v0/instances/42/")
    );
    assert_eq!(r.json(), json!({"state": "stopped"}));
    assert_eq!(f.requests().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn bad_key_404_auth_error_says_key_rejected() {
    let f = fake(|_, _| {
        status(
            404,
            json!({"success": false, "error": "auth_error", "msg": "Invalid user key"}),
        )
    })
    .await;
    let err = client(&f.base).current_user().await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Vast rejected the API key"), "{text}");
    assert!(text.contains("Invalid user key"), "{text}");
    assert_eq!(f.requests().len(), 1);
    assert_eq!(f.requests()[0].path, "/api/v0/users/current");
}

#[tokio::test]
async fn forbidden_403_and_deprecated_410() {
    let f = fake(|r, _| {
        if r.path.starts_with("/api/v1/") {
            status(410, json!({"success": false, "error": "deprecated_endpoint",
                "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."}))
        } else {
            status(403, json!({"success": false, "error": "auth_error", "msg": "This action requires login."}))
        }
    })
    .await;
    let c = client(&f.base);
    let err = c.reboot_instance(7).await.unwrap_err();
    assert!(
        matches!(&err, VastError::Forbidden { msg, .. } if msg == "This action requires login."),
        "{err:?}"
    );
    let err = c.list_instances(None).await.unwrap_err();
    assert!(
        matches!(&err, VastError::Deprecated { error: Some(e), .. } if e == "deprecated_endpoint"),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 410"));
    assert_eq!(f.requests().len(), 2, "neither is retried");
}

#[tokio::test]
async fn rate_limit_plain_text_is_retried_then_succeeds() {
    let f = fake(|_, n| {
        if n < 2 {
            text(429, "API requests too frequent")
        } else {
            ok(json!({"success": true}))
        }
    })
    .await;
    client(&f.base).change_bid(9, 0.25).await.unwrap();
    assert_eq!(f.count("PUT", "/api/v0/instances/bid_price/9/"), 3);
    assert_eq!(
        f.requests()[2].json(),
        json!({"client_id": "me", "price": 0.25})
    );
}

#[tokio::test]
async fn rate_limit_exhausts_attempts_with_json_detail() {
    let f = fake(|_, _| {
        status(
            429,
            json!({"detail": "API requests too frequent endpoint threshold=1.0"}),
        )
    })
    .await;
    let err = client(&f.base).get_instance(5).await.unwrap_err();
    match &err {
        VastError::RateLimited { attempts, msg, .. } => {
            assert_eq!(*attempts, 3);
            assert_eq!(msg, "API requests too frequent endpoint threshold=1.0");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(err.is_transient());
    assert_eq!(f.requests().len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_when_sent_and_too_long_ends_retries() {
    let f = fake(|r, n| match (r.path.as_str(), n) {
        ("/api/v0/instances/reboot/1/", 0) => Resp {
            retry_after: Some("0.05"),
            ..text(429, "API requests too frequent")
        },
        ("/api/v0/instances/reboot/1/", _) => ok(json!({"success": true})),
        _ => Resp {
            retry_after: Some("3600"),
            ..text(503, "maintenance")
        },
    })
    .await;
    let policy = RetryPolicy {
        max_retry_after: Duration::from_secs(1),
        ..RetryPolicy::immediate(3)
    };
    let c = VastClient::builder(&f.base, ApiKey::new(KEY))
        .retry(policy)
        .pacing(Pacing::none())
        .build()
        .unwrap();
    c.reboot_instance(1).await.unwrap();
    assert_eq!(f.count("PUT", "/api/v0/instances/reboot/1/"), 2);
    let err = c.reboot_instance(2).await.unwrap_err();
    assert!(
        matches!(
            err,
            VastError::Server {
                status: 503,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(f.count("PUT", "/api/v0/instances/reboot/2/"), 1);
}

#[tokio::test]
async fn search_quota_429_is_not_retried() {
    let f = fake(|_, _| {
        status(
            429,
            json!({"error": "search_quota_exceeded", "msg": "daily quota"}),
        )
    })
    .await;
    let err = client(&f.base)
        .search_offers(&SearchRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, VastError::RateLimited { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(f.requests().len(), 1);
}

#[tokio::test]
async fn gateway_errors_are_retried_but_500_is_not() {
    let f = fake(|r, n| match r.path.as_str() {
        "/api/v0/instances/reboot/1/" if n < 2 => {
            text(if n == 0 { 502 } else { 503 }, "<html>bad gateway</html>")
        }
        "/api/v0/instances/reboot/1/" => ok(json!({"success": true})),
        _ => text(500, "Internal Server Error"),
    })
    .await;
    let c = client(&f.base);
    c.reboot_instance(1).await.unwrap();
    assert_eq!(f.count("PUT", "/api/v0/instances/reboot/1/"), 3);

    let err = c.reboot_instance(2).await.unwrap_err();
    assert!(
        matches!(&err, VastError::Server { status: 500, attempts: 1, msg, .. } if msg == "Internal Server Error"),
        "{err:?}"
    );
    assert_eq!(f.count("PUT", "/api/v0/instances/reboot/2/"), 1);
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let f = fake(|_, _| Resp {
        delay: Duration::from_secs(3),
        ..ok(json!({"instances": null}))
    })
    .await;
    let c = VastClient::builder(&f.base, ApiKey::new(KEY))
        .retry(RetryPolicy::immediate(2))
        .pacing(Pacing::none())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = c.get_instance(3).await.unwrap_err();
    assert!(
        matches!(err, VastError::Timeout { attempts: 2, .. }),
        "{err:?}"
    );
    assert_eq!(f.requests().len(), 2);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let err = client(&base).current_user().await.unwrap_err();
    match &err {
        VastError::Connect {
            attempts, base_url, ..
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(base_url, &base);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert_no_key("connect error", &err.to_string());
    assert_no_key("connect error Debug", &format!("{err:?}"));
}

#[tokio::test]
async fn create_on_demand_and_interruptible() {
    let f = fake(|r, _| {
        let price = r.json()["price"].clone();
        if price.is_null() {
            ok(json!({"success": true, "new_contract": 7835610, "instance_api_key": "inst-SECRET-key"}))
        } else {
            ok(json!({"success": true, "new_contract": "7835611"}))
        }
    })
    .await;
    let c = client(&f.base);
    let mut req = CreateInstanceRequest {
        image: Some("pytorch/pytorch".into()),
        label: Some("vc-ws-1".into()),
        disk: 20.0,
        image_login: Some("-u bob -p hunter2-SECRET docker.io".into()),
        ..CreateInstanceRequest::default()
    };
    req.env.insert("HF_TOKEN".into(), "hf_SECRET".into());
    let resp = c.create_instance(555, &req).await.unwrap();
    assert_eq!(resp.new_contract, 7835610);
    assert_no_key("create response Debug", &format!("{resp:?}"));
    assert_no_key("create request Debug", &format!("{req:?}"));

    req.price = Some(0.2);
    let resp = c.create_instance(556, &req).await.unwrap();
    assert_eq!(resp.new_contract, 7835611);

    let seen = f.requests();
    assert_eq!(seen[0].path, "/api/v0/asks/555/");
    assert_eq!(seen[0].method, "PUT");
    let body = seen[0].json();
    assert_eq!(body["client_id"], "me");
    assert_eq!(body["price"], Value::Null);
    assert_eq!(body["disk"], json!(20.0));
    assert_eq!(body["label"], "vc-ws-1");
    assert_eq!(body["env"], json!({"HF_TOKEN": "hf_SECRET"}));
    assert_eq!(body["runtype"], "ssh");
    assert_eq!(seen[1].json()["price"], json!(0.2));
}

#[tokio::test]
async fn create_answer_without_new_contract_is_a_decode_error_without_secrets() {
    let f = fake(|_, _| ok(json!({"success": true, "instance_api_key": "inst-SECRET"}))).await;
    let err = client(&f.base)
        .create_instance(1, &CreateInstanceRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VastError::Decode { .. }), "{err:?}");
    assert_no_key("decode error", &format!("{err} {err:?}"));
}

#[tokio::test]
async fn create_with_too_low_bid_returns_the_stopped_instance_id() {
    let f = fake(|_, _| {
        ok(json!({"success": false, "error": "invalid_price",
                  "msg": "Your bid is below the minimum; instance created stopped", "new_contract": 9001}))
    })
    .await;
    let req = CreateInstanceRequest {
        image: Some("img".into()),
        price: Some(0.01),
        ..CreateInstanceRequest::default()
    };
    let err = client(&f.base).create_instance(1, &req).await.unwrap_err();
    assert_eq!(err.created_instance_id(), Some(9001));
    assert!(err.to_string().contains("9001"), "{err}");

    // The same with a non-200 status.
    let f = fake(|_, _| status(400, json!({"success": false, "error": "invalid_price", "msg": "bid too low", "new_contract": 9002}))).await;
    let err = client(&f.base).create_instance(1, &req).await.unwrap_err();
    assert_eq!(err.created_instance_id(), Some(9002));
}

#[tokio::test]
async fn create_is_not_retried_after_a_gateway_error_but_is_after_429() {
    let f = fake(|_, _| text(504, "Gateway Timeout")).await;
    let err = client(&f.base)
        .create_instance(1, &CreateInstanceRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, VastError::Server { status: 504, .. }),
        "{err:?}"
    );
    assert_eq!(
        f.requests().len(),
        1,
        "a create Vast may have acted on is not repeated"
    );

    let f = fake(|_, n| {
        if n == 0 {
            text(429, "API requests too frequent")
        } else {
            ok(json!({"success": true, "new_contract": 5}))
        }
    })
    .await;
    let resp = client(&f.base)
        .create_instance(1, &CreateInstanceRequest::default())
        .await
        .unwrap();
    assert_eq!(resp.new_contract, 5);
    assert_eq!(f.requests().len(), 2);
}

fn instance_json(id: u64, label: &str) -> Value {
    json!({"id": id, "label": label, "actual_status": "running", "intended_status": "running",
           "cur_state": "running", "next_state": "running", "ports": null,
           "ssh_host": "ssh5.vast.ai", "ssh_port": 20000 + id, "image_runtype": "ssh",
           "extra_env": [["-p 8080:8080", "1"]], "start_date": 1.7e9})
}

#[tokio::test]
async fn list_follows_next_token_and_filters_by_label() {
    let all: Vec<Value> = (1..=60)
        .map(|i| {
            instance_json(
                i,
                if i % 3 == 0 {
                    "vc-ws-job"
                } else if i % 3 == 1 {
                    "other"
                } else {
                    ""
                },
            )
        })
        .collect();
    let f = fake(move |r, _| {
        let start: usize = r
            .param("after_token")
            .map_or(0, |t| t.trim_start_matches("tok").parse().unwrap());
        let limit: usize = r.param("limit").unwrap().parse().unwrap();
        let end = (start + limit).min(all.len());
        let next = if end < all.len() {
            json!(format!("tok{end}"))
        } else {
            Value::Null
        };
        ok(
            json!({"success": true, "instances": all[start..end], "next_token": next,
                  "total_instances": all.len()}),
        )
    })
    .await;
    let c = client(&f.base);
    let everything = c.list_instances(None).await.unwrap();
    assert_eq!(everything.len(), 60);
    assert_eq!(
        everything.iter().map(|i| i.id).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    let seen = f.requests();
    assert_eq!(seen.len(), 3, "60 instances at 25 a page");
    assert!(seen.iter().all(|r| r.path == "/api/v1/instances/"));
    assert_eq!(seen[0].param("after_token"), None);
    assert_eq!(seen[1].param("after_token").as_deref(), Some("tok25"));
    assert_eq!(seen[2].param("after_token").as_deref(), Some("tok50"));
    assert_eq!(seen[0].param("limit").as_deref(), Some("25"));

    let ours = c.list_instances(Some("vc-ws-")).await.unwrap();
    assert_eq!(ours.len(), 20);
    assert!(ours.iter().all(|i| i.label.as_deref() == Some("vc-ws-job")));
}

#[tokio::test]
async fn repeated_pagination_token_is_an_error_not_a_loop() {
    let f =
        fake(|_, _| ok(json!({"instances": [instance_json(1, "x")], "next_token": "same"}))).await;
    let err = client(&f.base).list_instances(None).await.unwrap_err();
    assert!(
        err.to_string().contains("repeated a pagination token"),
        "{err}"
    );
    assert_eq!(f.requests().len(), 2);
}

#[tokio::test]
async fn tolerant_instance_parsing_and_ssh_endpoints() {
    let f = fake(|r, _| match r.path.as_str() {
        "/api/v0/instances/1/" => ok(json!({"instances": {
            "id": "1", "actual_status": "hibernating_new_state", "ports": null,
            "public_ipaddr": " 203.0.113.9 \n", "ssh_host": "ssh5.vast.ai", "ssh_port": "22022",
            "image_runtype": "jupyter_proxy ssh_proxy", "dph_total": "0.4", "num_gpus": 1.0,
            "is_bid": 1, "local_ipaddrs": "10.0.0.2 \n"
        }})),
        "/api/v0/instances/2/" => ok(json!({"instances": {
            "id": 2, "actual_status": "running", "public_ipaddr": "203.0.113.10 ",
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40022"}], "8080/tcp": null},
            "ssh_host": "ssh6.vast.ai", "ssh_port": 30000, "image_runtype": "ssh ssh_direc ssh_proxy"
        }})),
        "/api/v0/instances/3/" => ok(json!({"instances": {"id": 3}})),
        _ => ok(json!({"instances": null})),
    })
    .await;
    let c = client(&f.base);

    let i1 = c.get_instance(1).await.unwrap().unwrap();
    assert_eq!(
        i1.status(),
        InstanceStatus::Other("hibernating_new_state".into())
    );
    assert_eq!(i1.actual_status.as_deref(), Some("hibernating_new_state"));
    assert!(i1.ports.is_empty());
    assert_eq!(i1.public_ipaddr.as_deref(), Some("203.0.113.9"));
    assert_eq!(i1.dph_total, Some(0.4));
    assert_eq!(i1.num_gpus, Some(1));
    assert_eq!(i1.is_bid, Some(true));
    let ssh = i1.ssh_endpoint().unwrap();
    assert_eq!(
        (ssh.host.as_str(), ssh.port, ssh.direct),
        ("ssh5.vast.ai", 22023, false)
    );

    let i2 = c.get_instance(2).await.unwrap().unwrap();
    let ssh = i2.ssh_endpoint().unwrap();
    assert_eq!(
        (ssh.host.as_str(), ssh.port, ssh.direct),
        ("203.0.113.10", 40022, true)
    );
    assert_eq!(ssh.url(), "ssh://root@203.0.113.10:40022");
    assert_eq!(i2.status(), InstanceStatus::Running);

    let i3 = c.get_instance(3).await.unwrap().unwrap();
    assert_eq!(i3.status(), InstanceStatus::Provisioning);
    assert_eq!(i3.ssh_endpoint(), None);
    assert_eq!(i3.label, None);

    assert!(c.get_instance(4).await.unwrap().is_none());
    assert_eq!(f.requests()[0].param("owner").as_deref(), Some("me"));
}

#[tokio::test]
async fn destroy_and_verify_destroys_again_when_the_instance_reappears() {
    let f = fake(|r, n| match (r.method.as_str(), n) {
        ("DELETE", _) => ok(json!({"success": true})),
        ("GET", 0) => ok(json!({"instances": instance_json(8, "vc")})),
        ("GET", _) => ok(json!({"instances": null})),
        _ => text(400, "unexpected"),
    })
    .await;
    client(&f.base).destroy_and_verify(8).await.unwrap();
    assert_eq!(f.count("DELETE", "/api/v0/instances/8/"), 2);
    assert_eq!(f.count("GET", "/api/v0/instances/8/"), 2);
    assert_eq!(f.requests()[0].json(), json!({}));
}

#[tokio::test]
async fn destroy_and_verify_reports_an_instance_that_stays() {
    let f = fake(|r, _| match r.method.as_str() {
        "DELETE" => ok(json!({"success": true})),
        _ => ok(json!({"instances": instance_json(8, "vc")})),
    })
    .await;
    let err = client(&f.base).destroy_and_verify(8).await.unwrap_err();
    assert!(
        matches!(
            err,
            VastError::NotGone {
                id: 8,
                checks: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn destroying_a_gone_instance_is_fine() {
    let f = fake(|r, _| match r.path.as_str() {
        "/api/v0/instances/1/" => {
            ok(json!({"success": false, "error": "no_such_instance", "msg": "no such instance"}))
        }
        _ => status(
            404,
            json!({"error": "not_found", "msg": "Instance not found"}),
        ),
    })
    .await;
    let c = client(&f.base);
    c.destroy_instance(1).await.unwrap();
    c.destroy_instance(2).await.unwrap();
}

#[tokio::test]
async fn small_operations_send_what_the_cli_sends() {
    let f = fake(|_, _| ok(json!({"success": true}))).await;
    let c = client(&f.base);
    c.start_instance(1).await.unwrap();
    c.set_label(1, "vc-ws-7").await.unwrap();
    c.attach_ssh_key(1, "ssh-ed25519 AAAAC3Nza test@host\n")
        .await
        .unwrap();
    let err = c
        .attach_ssh_key(1, "-----BEGIN OPENSSH PRIVATE KEY-----\nabc")
        .await
        .unwrap_err();
    assert!(matches!(err, VastError::InvalidArgument { .. }));
    assert!(c.change_bid(1, f64::NAN).await.is_err());
    let seen = f.requests();
    assert_eq!(
        seen.len(),
        3,
        "invalid arguments are refused before sending"
    );
    assert_eq!(seen[0].json(), json!({"state": "running"}));
    assert_eq!(seen[1].json(), json!({"label": "vc-ws-7"}));
    assert_eq!(
        (seen[2].method.as_str(), seen[2].path.as_str()),
        ("POST", "/api/v0/instances/1/ssh/")
    );
    assert_eq!(
        seen[2].json(),
        json!({"ssh_key": "ssh-ed25519 AAAAC3Nza test@host"})
    );
}

#[tokio::test]
async fn logs_are_requested_then_polled_without_auth() {
    let base = Arc::new(Mutex::new(String::new()));
    let b2 = base.clone();
    let f = fake(move |r, n| match r.path.as_str() {
        "/api/v0/instances/request_logs/4/" => ok(json!({"success": true,
            "result_url": format!("{}/logs/abc.log", b2.lock().unwrap()), "msg": "uploading"})),
        "/logs/abc.log" if n < 2 => text(404, "NoSuchKey"),
        "/logs/abc.log" => text(200, "line one\nline two\n"),
        _ => text(400, "unexpected"),
    })
    .await;
    *base.lock().unwrap() = f.base.clone();
    let logs = client(&f.base).logs(4, Some(100)).await.unwrap();
    assert_eq!(logs, "line one\nline two\n");
    let seen = f.requests();
    assert_eq!(seen[0].json(), json!({"tail": "100"}));
    let polls: Vec<&Req> = seen.iter().filter(|r| r.path == "/logs/abc.log").collect();
    assert_eq!(polls.len(), 3);
    assert!(
        polls.iter().all(|r| r.auth.is_none()),
        "the result URL gets no credentials"
    );
}

#[tokio::test]
async fn logs_that_never_appear_give_up() {
    let base = Arc::new(Mutex::new(String::new()));
    let b2 = base.clone();
    let f = fake(move |r, _| match r.path.as_str() {
        "/api/v0/instances/request_logs/4/" => {
            ok(json!({"result_url": format!("{}/logs/x", b2.lock().unwrap())}))
        }
        _ => text(404, "NoSuchKey"),
    })
    .await;
    *base.lock().unwrap() = f.base.clone();
    let err = client(&f.base).logs(4, None).await.unwrap_err();
    assert!(
        matches!(err, VastError::LogsNotReady { id: 4, tries: 5 }),
        "{err:?}"
    );
    assert_eq!(f.requests()[0].json(), json!({}));
}

#[tokio::test]
async fn current_user_drops_the_api_key_vast_sends_back() {
    let f = fake(|_, _| {
        ok(
            json!({"id": 77, "email": "a@b.c", "credit": "25.5", "balance": 0,
                                   "api_key": KEY, "username": "ann"}),
        )
    })
    .await;
    let user = client(&f.base).current_user().await.unwrap();
    assert_eq!(user.credit, Some(25.5));
    assert_eq!(user.id, Some(77));
    assert_no_key("CurrentUser Debug", &format!("{user:?}"));
    assert_no_key("CurrentUser JSON", &serde_json::to_string(&user).unwrap());
}

#[tokio::test]
async fn charges_with_day_range_pages_and_items() {
    let f = fake(|r, _| {
        let page2 = r.param("after_token").is_some();
        let result = json!({"start": 1730419200, "end": 1730678400, "type": "instance",
            "source": if page2 { "instance-2" } else { "instance-1" },
            "description": "Instance charges", "amount": "38.421",
            "metadata": {"label": "vc-ws-1"},
            "items": [
                {"type": "gpu", "amount": 37.344, "description": "96.000 hours at $0.389/hour", "source": null, "metadata": {}, "items": []},
                {"type": "disk", "amount": 1.0}, {"type": "bwd", "amount": "0.05"}, {"type": "bwu", "amount": 0.027}
            ]});
        ok(json!({"success": true, "count": 1, "results": [result],
                  "next_token": if page2 { Value::Null } else { json!("t2") }}))
    })
    .await;
    let charges = client(&f.base)
        .charges(1730419200, 1730937600)
        .await
        .unwrap();
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[0].instance_id(), Some(1));
    assert_eq!(charges[1].instance_id(), Some(2));
    assert_eq!(charges[0].amount, Some(38.421));
    assert_eq!(charges[0].items.len(), 4);
    assert_eq!(charges[0].item_amount("gpu"), 37.344);
    assert_eq!(charges[0].item_amount("bwd"), 0.05);
    let r = &f.requests()[0];
    assert_eq!(r.path, "/api/v0/charges/");
    let filters: Value = serde_json::from_str(&r.param("select_filters").unwrap()).unwrap();
    assert_eq!(
        filters,
        json!({"day": {"gte": 1730419200, "lte": 1730937600}})
    );
    assert!(client(&f.base).charges(10, 5).await.is_err());
}

#[tokio::test]
async fn api_key_never_appears_in_debug_or_errors() {
    // A server that echoes the key back in its error message.
    let f = fake(|_, _| {
        status(
            400,
            json!({"success": false, "error": "invalid_args",
        "msg": format!("bad request from key {KEY}")}),
        )
    })
    .await;
    let c = client(&f.base);
    assert_no_key("client Debug", &format!("{c:?}"));
    assert_no_key("ApiKey Debug", &format!("{:?}", ApiKey::new(KEY)));
    assert_no_key("ApiKey Display", &ApiKey::new(KEY).to_string());
    let err = c.stop_instance(1).await.unwrap_err();
    assert!(err.to_string().contains("<redacted>"), "{err}");
    assert_no_key("error Display", &err.to_string());
    assert_no_key("error Debug", &format!("{err:?}"));

    let f = fake(|_, _| text(200, &format!("not json {KEY}"))).await;
    let err = client(&f.base).reboot_instance(1).await.unwrap_err();
    assert!(matches!(err, VastError::Decode { .. }), "{err:?}");
    assert_no_key("decode error", &format!("{err} {err:?}"));
}

#[tokio::test]
async fn pacing_spaces_requests_to_one_endpoint() {
    let f = fake(|_, _| ok(json!({"success": true}))).await;
    let mut pacing = Pacing::none();
    pacing.per_endpoint.insert(
        "PUT /instances/reboot/{id}/".into(),
        Duration::from_millis(200),
    );
    let c = VastClient::builder(&f.base, ApiKey::new(KEY))
        .retry(RetryPolicy::none())
        .pacing(pacing)
        .build()
        .unwrap();
    let (a, b, d) = tokio::join!(
        c.reboot_instance(1),
        c.reboot_instance(2),
        c.reboot_instance(3)
    );
    a.unwrap();
    b.unwrap();
    d.unwrap();
    c.start_instance(1).await.unwrap(); // another endpoint: not paced
    let mut times: Vec<std::time::Instant> = f
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v0/instances/reboot/"))
        .map(|r| r.at)
        .collect();
    times.sort();
    assert_eq!(times.len(), 3);
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        // Pacing spaces the sends 200 ms apart; arrival times can be squeezed a little by
        // connection set-up on a loaded machine, so only require half. Unpaced, they arrive
        // within a millisecond or two of each other.
        assert!(
            gap >= Duration::from_millis(100),
            "requests only {gap:?} apart"
        );
    }
}

#[test]
fn key_resolution_order() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(home.join(".config/vastai")).unwrap();
    std::fs::create_dir_all(xdg.join("vastai")).unwrap();

    let missing = resolve_api_key_from(None, Some(&xdg), Some(&home)).unwrap_err();
    let msg = missing.to_string();
    assert!(
        msg.contains("VAST_API_KEY") && msg.contains("vast_api_key"),
        "{msg}"
    );

    std::fs::write(home.join(".vast_api_key"), "legacy-key\n").unwrap();
    let k = resolve_api_key_from(None, Some(&xdg), Some(&home)).unwrap();
    assert_eq!(k.expose(), "legacy-key");

    // Without XDG_CONFIG_HOME the file is under ~/.config.
    std::fs::write(
        home.join(".config/vastai/vast_api_key"),
        "  home-config-key \n",
    )
    .unwrap();
    assert_eq!(
        resolve_api_key_from(None, None, Some(&home))
            .unwrap()
            .expose(),
        "home-config-key"
    );
    // XDG_CONFIG_HOME is honoured.
    std::fs::write(xdg.join("vastai/vast_api_key"), "xdg-key").unwrap();
    assert_eq!(
        resolve_api_key_from(None, Some(&xdg), Some(&home))
            .unwrap()
            .expose(),
        "xdg-key"
    );
    // The environment wins; an empty value does not count.
    assert_eq!(
        resolve_api_key_from(Some("env-key"), Some(&xdg), Some(&home))
            .unwrap()
            .expose(),
        "env-key"
    );
    assert_eq!(
        resolve_api_key_from(Some(" "), Some(&xdg), Some(&home))
            .unwrap()
            .expose(),
        "xdg-key"
    );
}

#[test]
fn url_prefixing_as_the_cli() {
    let b = "http://h:1";
    assert_eq!(
        api_url(b, "/instances/1/"),
        "http://h:1/api/v0/instances/1/"
    );
    assert_eq!(
        api_url(b, "/api/v1/instances/"),
        "http://h:1/api/v1/instances/"
    );
    assert_eq!(api_url(b, "/api/v12/x/"), "http://h:1/api/v12/x/");
    assert_eq!(api_url(b, "/api/vx/"), "http://h:1/api/v0/api/vx/");
    assert_eq!(api_url(b, "/api/v1"), "http://h:1/api/v0/api/v1");
    assert_eq!(
        api_url("http://h:1/prefix", "/bundles/"),
        "http://h:1/prefix/api/v0/bundles/"
    );
    assert!(matches!(
        VastClient::new("ftp://x", ApiKey::new("k")),
        Err(VastError::BadBaseUrl(_))
    ));
}
