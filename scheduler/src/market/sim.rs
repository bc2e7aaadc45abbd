//! [`Market`] for the in-process simulator (`vast::sim::Market`), driven by the engine's clock.
//!
//! The simulator speaks Vast's JSON; this wrapper sends it the same bodies the HTTP client
//! would and reads the answers through the same tolerant `vast::types`, so the engine sees
//! exactly what it would see over HTTP — minus the network, and with time under our control.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use rust_decimal::Decimal;

use super::{
    CreateSpec, Endpoint, Market, MarketError, OfferSearch, create_request, market_instance,
    offer_obs, search_request,
};
use crate::clock::EpochMs;
use crate::reconcile::{MarketInstance, OfferObs, VastId};

/// The simulator behind a lock, shareable with the code that injects faults.
#[derive(Clone)]
pub struct SimMarket {
    inner: Arc<Mutex<vast::sim::Market>>,
}

impl std::fmt::Debug for SimMarket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMarket").finish_non_exhaustive()
    }
}

fn sim_err(op: &'static str, e: vast::sim::SimError) -> MarketError {
    MarketError::Other {
        op,
        msg: e.to_string(),
    }
}

fn id(op: &'static str, id: VastId) -> Result<u64, MarketError> {
    u64::try_from(id).map_err(|_| MarketError::Other {
        op,
        msg: format!("instance id {id} is negative"),
    })
}

impl SimMarket {
    pub fn new(market: vast::sim::Market) -> Self {
        Self {
            inner: Arc::new(Mutex::new(market)),
        }
    }

    /// Direct access (fault injection, charges, the event log).
    pub fn lock(&self) -> MutexGuard<'_, vast::sim::Market> {
        // A panic while holding the lock leaves a market we can still read.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The simulator's own exact charges for every instance ever created: (id, total).
    pub fn charges(&self) -> Vec<(VastId, Decimal)> {
        let m = self.lock();
        m.all_instance_ids()
            .into_iter()
            .filter_map(|i| {
                m.charges(i)
                    .map(|c| (i64::try_from(i).unwrap_or(i64::MAX), c.total))
            })
            .collect()
    }

    /// Ids of live instances whose label starts with `prefix`.
    pub fn live_with_prefix(&self, prefix: &str) -> Vec<VastId> {
        let m = self.lock();
        m.list(None)
            .into_iter()
            .filter_map(|v| serde_json::from_value::<vast::types::Instance>(v).ok())
            .filter(|i| i.label.as_deref().is_some_and(|l| l.starts_with(prefix)))
            .map(|i| i64::try_from(i.id).unwrap_or(i64::MAX))
            .collect()
    }
}

impl Market for SimMarket {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn advance_to(&self, now: EpochMs) {
        self.lock().advance_to(now);
    }

    fn search(&self, q: &OfferSearch) -> BoxFuture<'_, Result<Vec<OfferObs>, MarketError>> {
        let req = search_request(q);
        let res = (|| {
            let body = req.to_body().map_err(|e| MarketError::Other {
                op: "search",
                msg: e.to_string(),
            })?;
            let found = self
                .lock()
                .search(&body)
                .map_err(|e| sim_err("search", e))?;
            Ok(found
                .into_iter()
                .filter_map(|v| serde_json::from_value::<vast::types::Offer>(v).ok())
                .filter_map(|o| offer_obs(&o))
                .collect())
        })();
        Box::pin(async move { res })
    }

    fn create(&self, spec: &CreateSpec) -> BoxFuture<'_, Result<VastId, MarketError>> {
        let offer_id = spec.offer.offer_id;
        let res = (|| {
            let body =
                serde_json::to_value(create_request(spec)).map_err(|e| MarketError::Other {
                    op: "create",
                    msg: e.to_string(),
                })?;
            let r = self
                .lock()
                .create(id("create", offer_id)?, &body)
                .map_err(|e| sim_err("create", e))?;
            let new = i64::try_from(r.new_contract).unwrap_or(i64::MAX);
            if r.success {
                Ok(new)
            } else {
                Err(MarketError::BidTooLow {
                    offer_id,
                    new_contract: new,
                })
            }
        })();
        Box::pin(async move { res })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<MarketInstance>, MarketError>> {
        let list: Vec<MarketInstance> = self
            .lock()
            .list(None)
            .into_iter()
            .filter_map(|v| serde_json::from_value::<vast::types::Instance>(v).ok())
            .filter(|i| i.label.as_deref().is_some_and(|l| l.starts_with(prefix)))
            .map(|i| {
                let mut m = market_instance(&i);
                // A simulated instance is reachable once it runs: its folder is the machine.
                m.ssh_ready = m.actual_status.as_deref() == Some("running");
                m
            })
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn destroy(&self, vast_id: VastId) -> BoxFuture<'_, Result<(), MarketError>> {
        let res = (|| {
            let i = id("destroy", vast_id)?;
            let mut m = self.lock();
            match m.destroy(i) {
                Ok(()) => {}
                Err(vast::sim::SimError::NoSuchInstance(_)) => {}
                Err(e) => return Err(sim_err("destroy", e)),
            }
            // Verify, as with the real API.
            if m.get(i).is_some() {
                return Err(MarketError::Other {
                    op: "destroy",
                    msg: format!("instance {i} still listed after destroy"),
                });
            }
            Ok(())
        })();
        Box::pin(async move { res })
    }

    fn change_bid(&self, vast_id: VastId, bid: Decimal) -> BoxFuture<'_, Result<(), MarketError>> {
        let res = id("change bid", vast_id).and_then(|i| {
            self.lock()
                .change_bid(i, Some(bid))
                .map_err(|e| sim_err("change bid", e))
        });
        Box::pin(async move { res })
    }

    fn attach_ssh_key<'a>(
        &'a self,
        vast_id: VastId,
        public_key: &'a str,
    ) -> BoxFuture<'a, Result<(), MarketError>> {
        let res = id("attach ssh key", vast_id).and_then(|i| {
            self.lock()
                .attach_ssh_key(i, public_key)
                .map_err(|e| sim_err("attach ssh key", e))
        });
        Box::pin(async move { res })
    }

    fn endpoint(&self, vast_id: VastId) -> BoxFuture<'_, Result<Option<Endpoint>, MarketError>> {
        let res = id("get", vast_id).map(|i| {
            let m = self.lock();
            m.get(i).map(|_| Endpoint::Local {
                dir: m.instance_dir(i),
            })
        });
        Box::pin(async move { res })
    }
}
