//! The market over HTTP: the routes Vast serves (with and without trailing slashes), the same
//! bodies and error shapes, auth by Bearer header or `api_key` query parameter, per-endpoint
//! rate limits (429 with a plain-text or `{"detail": ...}` body and no Retry-After) and random
//! 429/5xx faults, so clients' retry paths get exercised.
//!
//! The model stays synchronous behind a `std::sync::Mutex`; no lock is held across an await.

// Handlers bail out early with a ready HTTP response; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::config::RateLimitBody;
use super::filter;
use super::market::{Market, SimError};

type Shared = Arc<Mutex<Market>>;
type Q = Query<HashMap<String, String>>;

#[derive(Clone)]
struct App {
    market: Shared,
    wall_clock: bool,
    last_call: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

/// Epoch milliseconds of the wall clock.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unwrap a `Result<T, Response>` inside a handler, answering with the error response.
macro_rules! or_respond {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

fn lock(m: &Shared) -> MutexGuard<'_, Market> {
    // A panic in one handler must not take the whole market down with a poisoned lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_resp(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn ok(v: Value) -> Response {
    json_resp(StatusCode::OK, v)
}

fn sim_err(e: &SimError) -> Response {
    json_resp(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        e.to_json(),
    )
}

fn bad_request(error: &str, msg: impl Into<String>) -> Response {
    json_resp(
        StatusCode::BAD_REQUEST,
        json!({"success": false, "error": error, "msg": msg.into()}),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|_| {
        json_resp(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "msg": "Invalid json body"}),
        )
    })
}

/// A query parameter that travels as URL-encoded JSON (`select_filters`, `order_by`, …).
fn json_param(q: &HashMap<String, String>, key: &str) -> Result<Option<Value>, Response> {
    match q.get(key) {
        None => Ok(None),
        Some(s) => serde_json::from_str(s)
            .map(Some)
            .map_err(|_| bad_request("invalid_args", format!("{key} is not valid JSON: {s}"))),
    }
}

fn parse_id(s: &str) -> Result<u64, Response> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| bad_request("invalid_id", format!("Invalid instance id {s:?}.")))
}

impl App {
    /// Auth, rate limit, faults, clock: what every authenticated route does first.
    fn enter(
        &self,
        method: &str,
        pattern: &str,
        headers: &HeaderMap,
        q: &HashMap<String, String>,
    ) -> Result<MutexGuard<'_, Market>, Response> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| q.get("api_key").cloned().filter(|s| !s.is_empty()));
        let mut market = lock(&self.market);
        let Some(key) = key else {
            return Err(json_resp(
                StatusCode::FORBIDDEN,
                json!({"success": false, "error": "auth_error", "msg": "This action requires login."}),
            ));
        };
        if !market.check_api_key(&key) {
            return Err(json_resp(
                StatusCode::NOT_FOUND,
                json!({"success": false, "error": "auth_error", "msg": "Invalid user key"}),
            ));
        }
        let endpoint = format!("{method} {pattern}");
        let limits = market.config().rate_limits.clone();
        if let Some(interval) = limits
            .per_endpoint_s
            .get(&endpoint)
            .copied()
            .or(limits.default_s)
            && interval > 0.0
        {
            let now = Instant::now();
            let mut last = self.last_call.lock().unwrap_or_else(|p| p.into_inner());
            let k = (endpoint.clone(), key.clone());
            if let Some(prev) = last.get(&k)
                && now.duration_since(*prev) < Duration::from_secs_f64(interval)
            {
                let text = market.http_coin();
                return Err(too_many(limits.body, text, interval));
            }
            last.insert(k, now);
        }
        match market.roll_http_fault() {
            Some(429) => {
                let text = market.http_coin();
                return Err(too_many(limits.body, text, 1.0));
            }
            Some(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                return Err((
                    status,
                    [(header::CONTENT_TYPE, "text/html")],
                    format!(
                        "<html><body><h1>{code} {}</h1></body></html>",
                        status.canonical_reason().unwrap_or("")
                    ),
                )
                    .into_response());
            }
            _ => {}
        }
        if self.wall_clock {
            market.advance_to(wall_ms());
        }
        Ok(market)
    }
}

fn too_many(style: RateLimitBody, coin: bool, threshold: f64) -> Response {
    let msg = format!("API requests too frequent endpoint threshold={threshold:.1}");
    let text = match style {
        RateLimitBody::Text => true,
        RateLimitBody::Detail => false,
        RateLimitBody::Alternate => coin,
    };
    if text {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "text/plain")],
            msg,
        )
            .into_response()
    } else {
        json_resp(StatusCode::TOO_MANY_REQUESTS, json!({"detail": msg}))
    }
}

// ---------------------------------------------------------------------------- handlers

async fn search_offers(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let pattern = "/api/v0/bundles/";
    let market = or_respond!(app.enter("POST", pattern, &headers, &q));
    let body = or_respond!(parse_body(&body));
    match market.search(&body) {
        Ok(offers) => ok(json!({"offers": offers})),
        Err(e) => sim_err(&e),
    }
}

async fn search_asks_new(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let market = or_respond!(app.enter("PUT", "/api/v0/search/asks/", &headers, &q));
    let body = or_respond!(parse_body(&body));
    match market.search(&body) {
        Ok(offers) => ok(json!({"offers": offers})),
        Err(e) => sim_err(&e),
    }
}

async fn search_offers_get(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let market = or_respond!(app.enter("GET", "/api/v0/bundles/", &headers, &q));
    let body = match json_param(&q, "q") {
        Ok(v) => v.unwrap_or_else(|| json!({})),
        Err(r) => return r,
    };
    match market.search(&body) {
        Ok(offers) => ok(json!({"offers": offers})),
        Err(e) => sim_err(&e),
    }
}

async fn create_instance(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = match app.enter("PUT", "/api/v0/asks/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let body = or_respond!(parse_body(&body));
    let Ok(offer) = id.trim().parse::<u64>() else {
        return bad_request(
            "invalid_args",
            format!(
                "error 400/3467: Invalid args: 'id' is required and must be a valid offer ID, got {id:?}"
            ),
        );
    };
    match market.create(offer, &body) {
        Ok(r) => ok(r.to_json()),
        Err(e) => sim_err(&e),
    }
}

async fn v0_list_gone(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = app.enter("GET", "/api/v0/instances/", &headers, &q) {
        return r;
    }
    json_resp(
        StatusCode::GONE,
        json!({"success": false, "error": "deprecated_endpoint",
               "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."}),
    )
}

async fn bulk_state(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = or_respond!(app.enter("PUT", "/api/v0/instances/", &headers, &q));
    let body = or_respond!(parse_body(&body));
    let ids: Vec<u64> = body
        .get("ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| filter::as_num(v).map(|x| x as u64))
                .collect()
        })
        .unwrap_or_default();
    let state = body.get("state").and_then(Value::as_str).unwrap_or("");
    let mut failed = Vec::new();
    for id in ids {
        let r = match state {
            "running" => market.start(id),
            "stopped" => market.stop(id),
            other => {
                return bad_request(
                    "invalid_args",
                    format!("Invalid state {other:?}; expected running or stopped"),
                );
            }
        };
        if r.is_err() {
            failed.push(id);
        }
    }
    ok(json!({"success": failed.is_empty(), "failed": failed}))
}

async fn bulk_destroy(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = or_respond!(app.enter("DELETE", "/api/v0/instances/", &headers, &q));
    let body = or_respond!(parse_body(&body));
    let ids: Vec<u64> = body
        .get("instance_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| filter::as_num(v).map(|x| x as u64))
                .collect()
        })
        .unwrap_or_default();
    let failed: Vec<u64> = ids
        .into_iter()
        .filter(|id| market.destroy(*id).is_err())
        .collect();
    ok(json!({"success": failed.is_empty(), "failed": failed}))
}

async fn list_v1(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let market = or_respond!(app.enter("GET", "/api/v1/instances/", &headers, &q));
    let filters = match json_param(&q, "select_filters") {
        Ok(Some(Value::Object(o))) => o,
        Ok(None) => Map::new(),
        Ok(Some(other)) => {
            return bad_request(
                "invalid_args",
                format!("select_filters must be an object, got {other}"),
            );
        }
        Err(r) => return r,
    };
    let order = match json_param(&q, "order_by") {
        Ok(v) => v.unwrap_or_else(|| json!([])),
        Err(r) => return r,
    };
    let limit = match q.get("limit") {
        None => None,
        Some(s) => match s.trim().parse::<i64>() {
            Ok(l) => Some(l),
            Err(_) => {
                return bad_request(
                    "invalid_args",
                    format!("limit must be an integer, got {s:?}"),
                );
            }
        },
    };
    let token = q.get("after_token").map(String::as_str);
    match market.list_v1(&filters, &order, limit, token) {
        Ok(mut v) => {
            if let Some(Value::Array(cols)) = json_param(&q, "select_cols").ok().flatten()
                && !cols.iter().any(|c| c.as_str() == Some("*"))
                && let Some(Value::Array(rows)) = v.get_mut("instances")
            {
                for row in rows.iter_mut() {
                    let mut picked = Map::new();
                    for c in cols.iter().filter_map(Value::as_str) {
                        picked.insert(c.to_string(), row.get(c).cloned().unwrap_or(Value::Null));
                    }
                    *row = Value::Object(picked);
                }
            }
            ok(v)
        }
        Err(e) => sim_err(&e),
    }
}

async fn show_instance(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let market = match app.enter("GET", "/api/v0/instances/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    ok(json!({"instances": market.get(id)}))
}

async fn manage_instance(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = match app.enter("PUT", "/api/v0/instances/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    let body = or_respond!(parse_body(&body));
    let mut msgs = Vec::new();
    if let Some(state) = body.get("state") {
        let r = match state.as_str() {
            Some("running") => market.start(id),
            Some("stopped") => market.stop(id),
            _ => {
                return bad_request(
                    "invalid_args",
                    format!("Invalid state {state}; expected \"running\" or \"stopped\""),
                );
            }
        };
        if let Err(e) = r {
            return ok(json!({"success": false, "error": e.code(), "msg": e.to_string()}));
        }
        msgs.push(format!("state set to {}", state.as_str().unwrap_or("")));
    }
    if let Some(label) = body.get("label") {
        let l = match label {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        if let Err(e) = market.set_label(id, l) {
            return ok(json!({"success": false, "error": e.code(), "msg": e.to_string()}));
        }
        msgs.push("label set".to_string());
    }
    if msgs.is_empty() {
        return bad_request("invalid_args", "Nothing to do: expected 'state' or 'label'");
    }
    ok(json!({"success": true, "msg": msgs.join("; ")}))
}

async fn destroy_instance(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let mut market = match app.enter("DELETE", "/api/v0/instances/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    match market.destroy(id) {
        Ok(()) => ok(json!({"success": true})),
        Err(e) => ok(json!({"success": false, "error": e.code(), "msg": e.to_string()})),
    }
}

async fn change_bid(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = match app.enter("PUT", "/api/v0/instances/bid_price/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    let body = or_respond!(parse_body(&body));
    let price = match body.get("price") {
        None | Some(Value::Null) => None,
        Some(v) => match v.to_string().trim_matches('"').parse::<Decimal>() {
            Ok(d) => Some(d),
            Err(_) => return bad_request("invalid_price", "Please set a bid price >= 0.001."),
        },
    };
    match market.change_bid(id, price) {
        Ok(()) => ok(json!({"success": true})),
        Err(e) => sim_err(&e),
    }
}

async fn reboot(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let mut market = match app.enter("PUT", "/api/v0/instances/reboot/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    match market.reboot(id) {
        Ok(()) => ok(json!({"success": true})),
        Err(e) => ok(json!({"success": false, "error": e.code(), "msg": e.to_string()})),
    }
}

async fn request_logs(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let mut market = match app.enter("PUT", "/api/v0/instances/request_logs/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Ok(id) = id.trim().parse::<u64>() else {
        return json_resp(
            StatusCode::NOT_FOUND,
            json!({"error": "invalid_id", "msg": "Invalid instance id."}),
        );
    };
    let body = or_respond!(parse_body(&body));
    let tail = body
        .get("tail")
        .and_then(filter::as_num)
        .map(|t| t.max(0.0) as usize);
    let pat = body
        .get("filter")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match market.request_logs(id, tail, pat) {
        Ok(token) => ok(json!({
            "success": true,
            "result_url": format!("http://{host}/sim/logs/{token}.log"),
            "msg": "Logs are being prepared; fetch result_url."
        })),
        Err(_) => json_resp(
            StatusCode::NOT_FOUND,
            json!({"error": "invalid_id", "msg": "Invalid instance id."}),
        ),
    }
}

async fn log_result(State(app): State<App>, Path(file): Path<String>) -> Response {
    let token = file.strip_suffix(".log").unwrap_or(&file);
    let market = lock(&app.market);
    match market.logs_by_token(token) {
        Some(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            text.to_string(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/xml")],
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}

async fn instance_ssh_list(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let market = match app.enter("GET", "/api/v0/instances/{id}/ssh/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    match market.instance_ssh_keys(id) {
        Ok(keys) => {
            let rows: Vec<Value> = keys.iter().map(|k| json!({"public_key": k})).collect();
            ok(json!({"success": true, "ssh_keys": Value::Array(rows).to_string()}))
        }
        Err(e) => sim_err(&e),
    }
}

async fn instance_ssh_attach(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = match app.enter("POST", "/api/v0/instances/{id}/ssh/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    let body = or_respond!(parse_body(&body));
    let key = body.get("ssh_key").and_then(Value::as_str).unwrap_or("");
    match market.attach_ssh_key(id, key) {
        Ok(()) => {
            ok(json!({"success": true, "msg": format!("SSH key attached to instance {id}.")}))
        }
        Err(SimError::NoSuchInstance(_)) => sim_err(&SimError::NoSuchInstance(id)),
        Err(e) => bad_request("no_ssh_key", e.to_string()),
    }
}

async fn instance_ssh_detach(
    State(app): State<App>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let mut market = match app.enter("DELETE", "/api/v0/instances/{id}/ssh/{key}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    match market.detach_ssh_key(id, &key) {
        Ok(()) => {
            ok(json!({"success": true, "msg": format!("SSH key detached from instance {id}.")}))
        }
        Err(e) => sim_err(&e),
    }
}

fn key_json(k: &super::market::SshKey) -> Value {
    json!({"id": k.id, "user_id": 424242, "public_key": k.public_key, "key": k.public_key,
           "created_at": k.created_at, "deleted_at": null})
}

async fn ssh_keys_list(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let market = or_respond!(app.enter("GET", "/api/v0/ssh/", &headers, &q));
    ok(Value::Array(
        market.account_ssh_keys().iter().map(key_json).collect(),
    ))
}

async fn ssh_keys_create(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = or_respond!(app.enter("POST", "/api/v0/ssh/", &headers, &q));
    let body = or_respond!(parse_body(&body));
    let key = body.get("ssh_key").and_then(Value::as_str).unwrap_or("");
    match market.add_account_ssh_key(key) {
        Ok(k) => ok(json!({"success": true, "key": key_json(&k)})),
        Err(e) => bad_request("no_ssh_key", e.to_string()),
    }
}

async fn ssh_key_update(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let mut market = match app.enter("PUT", "/api/v0/ssh/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    let body = or_respond!(parse_body(&body));
    let key = body.get("ssh_key").and_then(Value::as_str).unwrap_or("");
    if !key.trim().starts_with("ssh") {
        return bad_request("no_ssh_key", "a public key starting with 'ssh' is required");
    }
    if market.update_account_ssh_key(id, key) {
        ok(json!({"success": true}))
    } else {
        json_resp(
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": "not_found", "msg": format!("SSH key {id} not found.")}),
        )
    }
}

async fn ssh_key_delete(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let mut market = match app.enter("DELETE", "/api/v0/ssh/{id}/", &headers, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = or_respond!(parse_id(&id));
    if market.delete_account_ssh_key(id) {
        ok(json!({"success": true}))
    } else {
        json_resp(
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": "not_found", "msg": format!("SSH key {id} not found.")}),
        )
    }
}

async fn current_user(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let market = or_respond!(app.enter("GET", "/api/v0/users/current/", &headers, &q));
    ok(market.user_json())
}

async fn charges(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let market = or_respond!(app.enter("GET", "/api/v0/charges/", &headers, &q));
    let filters = match json_param(&q, "select_filters") {
        Ok(Some(Value::Object(o))) => o,
        Ok(_) => Map::new(),
        Err(r) => return r,
    };
    let latest_first = q
        .get("latest_first")
        .is_some_and(|v| v == "true" || v == "True" || v == "1");
    let limit = q.get("limit").and_then(|s| s.trim().parse::<i64>().ok());
    match market.charges_report(
        &filters,
        latest_first,
        limit,
        q.get("after_token").map(String::as_str),
    ) {
        Ok(v) => ok(v),
        Err(e) => sim_err(&e),
    }
}

async fn invoices_v1(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = app.enter("GET", "/api/v1/invoices/", &headers, &q) {
        return r;
    }
    let filters = json_param(&q, "select_filters")
        .ok()
        .flatten()
        .unwrap_or(Value::Null);
    let when = filters.get("when");
    let valid = when
        .and_then(|w| w.get("gte"))
        .and_then(filter::as_num)
        .is_some()
        && when
            .and_then(|w| w.get("lte"))
            .and_then(filter::as_num)
            .is_some();
    if !valid {
        return ok(json!({"success": false, "error": "Invalid date range"}));
    }
    // The simulated account has no payments: its credit was granted at creation.
    ok(json!({"success": true, "count": 0, "total": 0, "next_token": null, "results": []}))
}

async fn gpu_names(State(app): State<App>) -> Response {
    let market = lock(&app.market);
    ok(json!({"gpu_names": market.gpu_names()}))
}

async fn instance_filters(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let market = or_respond!(app.enter("GET", "/api/v0/instances/filters/", &headers, &q));
    let rows = market.list(None);
    let distinct = |key: &str| {
        let mut v: Vec<String> = rows
            .iter()
            .filter_map(|r| r[key].as_str().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let filters = json!([{"actual_status": distinct("actual_status"), "verification": distinct("verification"), "gpu_name": distinct("gpu_name")}]);
    ok(json!({"filters": filters}))
}

/// Registers `path` with and without its trailing slash.
fn both(router: Router<App>, path: &str, mr: MethodRouter<App>) -> Router<App> {
    let bare = path.trim_end_matches('/');
    router
        .route(bare, mr.clone())
        .route(&format!("{bare}/"), mr)
}

/// The HTTP API over a shared market, with the clock left to the caller (virtual time).
pub fn router(shared: Arc<Mutex<Market>>) -> Router {
    router_with_clock(shared, false)
}

/// The HTTP API; with `wall_clock` every request first advances the market to the wall time.
pub fn router_with_clock(shared: Arc<Mutex<Market>>, wall_clock: bool) -> Router {
    let app = App {
        market: shared,
        wall_clock,
        last_call: Arc::new(Mutex::new(HashMap::new())),
    };
    let mut r: Router<App> = Router::new();
    r = both(
        r,
        "/api/v0/bundles/",
        post(search_offers).get(search_offers_get),
    );
    r = both(r, "/api/v0/search/asks/", put(search_asks_new));
    r = both(r, "/api/v0/asks/{id}/", put(create_instance));
    r = both(
        r,
        "/api/v0/instances/",
        get(v0_list_gone).put(bulk_state).delete(bulk_destroy),
    );
    r = both(r, "/api/v1/instances/", get(list_v1));
    r = both(r, "/api/v0/instances/filters/", get(instance_filters));
    r = both(
        r,
        "/api/v0/instances/{id}/",
        get(show_instance)
            .put(manage_instance)
            .delete(destroy_instance),
    );
    r = both(r, "/api/v0/instances/bid_price/{id}/", put(change_bid));
    r = both(r, "/api/v0/instances/reboot/{id}/", put(reboot));
    r = both(r, "/api/v0/instances/request_logs/{id}/", put(request_logs));
    r = both(
        r,
        "/api/v0/instances/{id}/ssh/",
        get(instance_ssh_list).post(instance_ssh_attach),
    );
    r = both(
        r,
        "/api/v0/instances/{id}/ssh/{key}/",
        axum::routing::delete(instance_ssh_detach),
    );
    r = both(r, "/api/v0/ssh/", get(ssh_keys_list).post(ssh_keys_create));
    r = both(
        r,
        "/api/v0/ssh/{id}/",
        put(ssh_key_update).delete(ssh_key_delete),
    );
    r = both(r, "/api/v0/users/current/", get(current_user));
    r = both(r, "/api/v0/charges/", get(charges));
    r = both(r, "/api/v1/invoices/", get(invoices_v1));
    r = both(r, "/api/v0/gpu_names/unique/", get(gpu_names));
    r = r.route("/sim/logs/{file}", get(log_result));
    r.fallback(|method: Method, uri: axum::http::Uri| async move {
        json_resp(
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": "not_found", "msg": format!("{method} {} is not served by the simulated market", uri.path())}),
        )
    })
    .with_state(app)
}

/// Serves the market on `listener` until the future is dropped. With `wall_clock` the market
/// follows the wall time: every request advances it, and so does a 100 ms ticker, so boots,
/// outbids and kills happen on time even when nobody is asking. The market should then have
/// been created with `start_ms` near the wall time (else the first advance replays the gap).
pub async fn serve(
    listener: tokio::net::TcpListener,
    market: Arc<Mutex<Market>>,
    wall_clock: bool,
) -> std::io::Result<()> {
    let ticker = if wall_clock {
        let m = market.clone();
        Some(tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(100));
            loop {
                iv.tick().await;
                lock(&m).advance_to(wall_ms());
            }
        }))
    } else {
        None
    };
    let result = axum::serve(listener, router_with_clock(market, wall_clock)).await;
    if let Some(t) = ticker {
        t.abort();
    }
    result
}
