//! The market the reconciler rents from, behind one small trait.
//!
//! [`Market`] is what the engine needs from Vast.ai and nothing more: search, buy (with our
//! label), list our instances by label prefix, destroy-and-verify, change a bid, and say how
//! to reach an instance. It is implemented for the real HTTP client ([`VastMarket`], which also
//! talks to `vasticlaude sim serve`) and for the in-process simulator ([`sim::SimMarket`]),
//! whose virtual clock the engine advances with [`Market::advance_to`]. Futures are boxed so the
//! engine can hold an `Arc<dyn Market>` chosen at run time (`--provider vast|sim`).

pub mod sim;

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};

use crate::clock::EpochMs;
use crate::reconcile::{MarketInstance, OfferChoice, OfferObs, VastId};

/// A market call that failed, with what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error("market {op} failed: {source}")]
    Vast {
        op: &'static str,
        #[source]
        source: vast::error::VastError,
    },
    /// A purchase answered "bid too low" but left a stopped contract behind.
    #[error("bid too low for offer {offer_id}; Vast left contract {new_contract}")]
    BidTooLow { offer_id: i64, new_contract: VastId },
    #[error("market {op} failed: {msg}")]
    Other { op: &'static str, msg: String },
}

/// What to buy.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSpec {
    pub offer: OfferChoice,
    pub label: String,
    /// Public SSH key to put on the instance (ours, never the user's).
    pub ssh_public_key: Option<String>,
}

/// How to reach an instance's files and processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ssh {
        host: String,
        port: u16,
    },
    /// A simulator instance: a folder on this machine.
    Local {
        dir: PathBuf,
    },
}

/// One offer search: a Vast query string (`num_gpus>=1 reliability>0.9`) and whether bids
/// are wanted.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferSearch {
    pub query: String,
    pub interruptible: bool,
    pub disk_gb: f64,
    pub limit: u32,
}

/// The effects the engine needs from a GPU market.
pub trait Market: Send + Sync {
    /// Short name for logs and status (`vast`, `sim`).
    fn name(&self) -> &'static str;

    /// Move a simulated market's clock to `now`; a real market ignores it.
    fn advance_to(&self, _now: EpochMs) {}

    fn search(&self, q: &OfferSearch) -> BoxFuture<'_, Result<Vec<OfferObs>, MarketError>>;

    /// Buy; the answer is the new instance's id.
    fn create(&self, spec: &CreateSpec) -> BoxFuture<'_, Result<VastId, MarketError>>;

    /// Our instances: every instance whose label starts with `prefix`.
    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<MarketInstance>, MarketError>>;

    /// Destroy and verify it is gone.
    fn destroy(&self, id: VastId) -> BoxFuture<'_, Result<(), MarketError>>;

    /// Change an interruptible instance's bid ($/h for the whole instance).
    fn change_bid(&self, id: VastId, bid: Decimal) -> BoxFuture<'_, Result<(), MarketError>>;

    /// How to reach a running instance (`None` while it is not reachable).
    fn endpoint(&self, id: VastId) -> BoxFuture<'_, Result<Option<Endpoint>, MarketError>>;

    /// Put our public SSH key on one instance (the user's own account keys are left alone).
    fn attach_ssh_key<'a>(
        &'a self,
        id: VastId,
        public_key: &'a str,
    ) -> BoxFuture<'a, Result<(), MarketError>>;
}

pub type SharedMarket = Arc<dyn Market>;

pub(crate) fn dec(v: Option<f64>) -> Decimal {
    v.and_then(Decimal::from_f64)
        .map(|d| d.round_dp(6))
        .unwrap_or_default()
}

/// An offer as the reconciler sees it.
pub fn offer_obs(o: &vast::types::Offer) -> Option<OfferObs> {
    let f = &o.fields;
    Some(OfferObs {
        offer_id: i64::try_from(f.id).ok()?,
        machine_id: f
            .machine_id
            .and_then(|m| i64::try_from(m).ok())
            .unwrap_or(0),
        num_gpus: f.num_gpus.unwrap_or(1).max(1),
        gpu_name: f.gpu_name.clone().unwrap_or_default(),
        gpu_ram_gb: f.gpu_ram.unwrap_or(0.0) / 1024.0,
        dph_total: dec(f.dph_total),
        dph_base: dec(f.dph_base.or(f.dph_total)),
        storage_cost: dec(f.storage_cost),
        min_bid: dec(f.min_bid.or(f.dph_total)),
        disk_space_gb: f.disk_space.unwrap_or(0.0),
        dlperf: f.dlperf.unwrap_or(0.0),
        reliability: f.reliability.unwrap_or(0.0),
        rented: f.rented.unwrap_or(false),
        seen_ms: 0,
    })
}

/// An instance as the reconciler sees it. `ssh_ready` is "running and an SSH endpoint is known".
pub fn market_instance(i: &vast::types::Instance) -> MarketInstance {
    let f = &i.fields;
    let running = f.actual_status.as_deref() == Some("running");
    MarketInstance {
        vast_id: i64::try_from(f.id).unwrap_or(i64::MAX),
        label: f.label.clone(),
        machine_id: f
            .machine_id
            .and_then(|m| i64::try_from(m).ok())
            .unwrap_or(0),
        actual_status: f.actual_status.clone(),
        intended_status: f.intended_status.clone(),
        cur_state: f.cur_state.clone(),
        status_msg: f.status_msg.clone(),
        is_bid: f.is_bid.unwrap_or(false),
        min_bid: f.min_bid.and_then(Decimal::from_f64).map(|d| d.round_dp(6)),
        ssh_ready: running && i.ssh_endpoint().is_some(),
    }
}

/// The search for `q`, best value first (`dlperf_per_dphtotal` descending): the planner ranks
/// offers by cost per unit of work, and a limited page of a cheapest-first search holds only the
/// smallest, slowest offers (on the real market, mostly single old GPUs).
pub(crate) fn search_request(q: &OfferSearch) -> vast::query::SearchRequest {
    let mut req = vast::query::SearchRequest::new(q.query.clone());
    req.kind = if q.interruptible {
        vast::query::OfferType::Bid
    } else {
        vast::query::OfferType::OnDemand
    };
    req.order = "dlperf_per_dphtotal-".into();
    req.limit = Some(q.limit);
    req.storage_gb = q.disk_gb;
    req
}

pub(crate) fn create_request(spec: &CreateSpec) -> vast::types::CreateInstanceRequest {
    let mut env = std::collections::BTreeMap::new();
    if let Some(k) = &spec.ssh_public_key {
        // Vast puts SSH_PUBLIC_KEY into root's authorized_keys for ssh runtypes.
        env.insert("SSH_PUBLIC_KEY".to_string(), k.trim().to_string());
    }
    vast::types::CreateInstanceRequest {
        image: Some(spec.offer.image.clone()),
        env,
        price: spec.offer.bid.and_then(|b| b.to_f64()),
        disk: spec.offer.disk_gb.max(1.0),
        label: Some(spec.label.clone()),
        cancel_unavail: true,
        ..Default::default()
    }
}

fn u64_id(id: VastId, op: &'static str) -> Result<u64, MarketError> {
    u64::try_from(id).map_err(|_| MarketError::Other {
        op,
        msg: format!("instance id {id} is negative"),
    })
}

/// The real Vast.ai API (or the simulator's HTTP server) through [`vast::client::VastClient`].
#[derive(Debug, Clone)]
pub struct VastMarket {
    client: vast::client::VastClient,
}

impl VastMarket {
    pub fn new(client: vast::client::VastClient) -> Self {
        Self { client }
    }
    pub fn client(&self) -> &vast::client::VastClient {
        &self.client
    }
}

impl Market for VastMarket {
    fn name(&self) -> &'static str {
        "vast"
    }

    fn search(&self, q: &OfferSearch) -> BoxFuture<'_, Result<Vec<OfferObs>, MarketError>> {
        let req = search_request(q);
        Box::pin(async move {
            let offers =
                self.client
                    .search_offers(&req)
                    .await
                    .map_err(|source| MarketError::Vast {
                        op: "search",
                        source,
                    })?;
            Ok(offers.iter().filter_map(offer_obs).collect())
        })
    }

    fn create(&self, spec: &CreateSpec) -> BoxFuture<'_, Result<VastId, MarketError>> {
        let req = create_request(spec);
        let offer_id = spec.offer.offer_id;
        Box::pin(async move {
            let id = u64_id(offer_id, "create")?;
            match self.client.create_instance(id, &req).await {
                Ok(r) => Ok(i64::try_from(r.new_contract).unwrap_or(i64::MAX)),
                Err(vast::error::VastError::BidTooLow { new_contract, .. }) => {
                    Err(MarketError::BidTooLow {
                        offer_id,
                        new_contract: i64::try_from(new_contract).unwrap_or(i64::MAX),
                    })
                }
                Err(source) => Err(MarketError::Vast {
                    op: "create",
                    source,
                }),
            }
        })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<MarketInstance>, MarketError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let list = self
                .client
                .list_instances(Some(&prefix))
                .await
                .map_err(|source| MarketError::Vast { op: "list", source })?;
            Ok(list.iter().map(market_instance).collect())
        })
    }

    fn destroy(&self, id: VastId) -> BoxFuture<'_, Result<(), MarketError>> {
        Box::pin(async move {
            self.client
                .destroy_and_verify(u64_id(id, "destroy")?)
                .await
                .map_err(|source| MarketError::Vast {
                    op: "destroy",
                    source,
                })
        })
    }

    fn change_bid(&self, id: VastId, bid: Decimal) -> BoxFuture<'_, Result<(), MarketError>> {
        Box::pin(async move {
            let price = bid.to_f64().unwrap_or(0.0);
            self.client
                .change_bid(u64_id(id, "change bid")?, price)
                .await
                .map_err(|source| MarketError::Vast {
                    op: "change bid",
                    source,
                })
        })
    }

    fn attach_ssh_key<'a>(
        &'a self,
        id: VastId,
        public_key: &'a str,
    ) -> BoxFuture<'a, Result<(), MarketError>> {
        Box::pin(async move {
            self.client
                .attach_ssh_key(u64_id(id, "attach ssh key")?, public_key)
                .await
                .map_err(|source| MarketError::Vast {
                    op: "attach ssh key",
                    source,
                })
        })
    }

    fn endpoint(&self, id: VastId) -> BoxFuture<'_, Result<Option<Endpoint>, MarketError>> {
        Box::pin(async move {
            let inst = self
                .client
                .get_instance(u64_id(id, "get")?)
                .await
                .map_err(|source| MarketError::Vast { op: "get", source })?;
            Ok(inst.and_then(|i| i.ssh_endpoint()).map(|e| Endpoint::Ssh {
                host: e.host,
                port: e.port,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_page_holds_the_best_value_offers_first() {
        let q = OfferSearch {
            query: "num_gpus>=1".into(),
            interruptible: false,
            disk_gb: 10.0,
            limit: 64,
        };
        let body = search_request(&q).to_body().expect("a valid query");
        assert_eq!(
            body["order"],
            serde_json::json!([["dlperf_per_dphtotal", "desc"]])
        );
        assert_eq!(body["limit"], 64);
        assert_eq!(body["type"], "on-demand");
    }
}
