//! The engine's effect traits as the simulation provides them: the in-process market with API
//! faults and a crash gate in front, and a journal that a crash freezes.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use scheduler::clock::EpochMs;
use scheduler::market::sim::SimMarket;
use scheduler::market::{CreateSpec, Endpoint, Market, MarketError, OfferSearch};
use scheduler::reconcile::engine::JournalError;
use scheduler::reconcile::{EngineState, Journal, MarketInstance, MemoryJournal, OfferObs, VastId};

use super::agents::AgentWorld;
use super::gate::CrashGate;
use super::rng::Rng;

/// API fault rates (per call).
#[derive(Debug, Clone)]
pub struct ApiFaults {
    /// A 429 "API requests too frequent" on any call.
    pub rate_limited: f64,
    /// A 5xx before the effect.
    pub server_error: f64,
    /// A purchase that went through but whose answer was lost (connection reset).
    pub create_answer_lost: f64,
}

impl ApiFaults {
    pub fn none() -> Self {
        Self {
            rate_limited: 0.0,
            server_error: 0.0,
            create_answer_lost: 0.0,
        }
    }
}

/// Sabotage, for the test that proves the checker can fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarketSabotage {
    /// Answer "destroyed" without destroying.
    pub swallow_destroys: bool,
}

/// [`SimMarket`] behind API faults and the crash gate; keeps the simulated agents in step with
/// the market's clock and events.
pub struct FaultyMarket {
    inner: SimMarket,
    agents: Arc<Mutex<AgentWorld>>,
    gate: Arc<CrashGate>,
    rng: Mutex<Rng>,
    faults: ApiFaults,
    pub sabotage: MarketSabotage,
    log: Mutex<Vec<String>>,
}

/// The sim market's futures are ready at once (no I/O): take the value without a runtime.
fn ready<T>(mut f: BoxFuture<'_, T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("the in-process market never waits"),
    }
}

fn fault(op: &'static str, msg: &str) -> MarketError {
    MarketError::Other {
        op,
        msg: msg.to_string(),
    }
}

impl FaultyMarket {
    pub fn new(
        inner: SimMarket,
        agents: Arc<Mutex<AgentWorld>>,
        gate: Arc<CrashGate>,
        seed: u64,
        faults: ApiFaults,
    ) -> Self {
        Self {
            inner,
            agents,
            gate,
            rng: Mutex::new(Rng::stream(seed, 0xA41)),
            faults,
            sabotage: MarketSabotage::default(),
            log: Mutex::new(Vec::new()),
        }
    }

    fn sync_agents(&self) {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).sync();
    }

    fn rng(&self) -> MutexGuard<'_, Rng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Roll the faults of one call: `Some(error)` when the call fails before its effect.
    fn roll(&self, op: &'static str) -> Option<MarketError> {
        let mut r = self.rng();
        if r.chance(self.faults.rate_limited) {
            drop(r);
            self.note(format!("api fault: {op} answered 429"));
            return Some(fault(
                op,
                "HTTP 429: API requests too frequent endpoint threshold=2.0",
            ));
        }
        if r.chance(self.faults.server_error) {
            drop(r);
            self.note(format!("api fault: {op} answered 502"));
            return Some(fault(op, "HTTP 502: Bad Gateway"));
        }
        None
    }

    fn note(&self, s: String) {
        let now = self.inner.lock().now_ms();
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{now} {s}"));
    }

    /// Fault notes since the last call.
    pub fn drain_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn dead(op: &'static str) -> MarketError {
        fault(op, "the scheduler process is dead")
    }
}

impl Market for FaultyMarket {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn advance_to(&self, now: EpochMs) {
        self.inner.advance_to(now);
        self.sync_agents();
    }

    fn search(&self, q: &OfferSearch) -> BoxFuture<'_, Result<Vec<OfferObs>, MarketError>> {
        let r = if self.gate.crashed() {
            Err(Self::dead("search"))
        } else if let Some(e) = self.roll("search") {
            Err(e)
        } else {
            ready(self.inner.search(q))
        };
        Box::pin(async move { r })
    }

    fn create(&self, spec: &CreateSpec) -> BoxFuture<'_, Result<VastId, MarketError>> {
        let r = (|| {
            if !self.gate.tick() {
                return Err(Self::dead("create"));
            }
            if let Some(e) = self.roll("create") {
                return Err(e);
            }
            let res = ready(self.inner.create(spec));
            self.sync_agents();
            let lost = self.rng().chance(self.faults.create_answer_lost);
            if !self.gate.tick() {
                return Err(Self::dead("create"));
            }
            if lost && res.is_ok() {
                self.note(format!(
                    "api fault: the answer to buying offer {} was lost",
                    spec.offer.offer_id
                ));
                return Err(fault("create", "connection reset by peer"));
            }
            res
        })();
        Box::pin(async move { r })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<MarketInstance>, MarketError>> {
        let r = if self.gate.crashed() {
            Err(Self::dead("list"))
        } else if let Some(e) = self.roll("list") {
            Err(e)
        } else {
            ready(self.inner.list(prefix))
        };
        Box::pin(async move { r })
    }

    fn destroy(&self, id: VastId) -> BoxFuture<'_, Result<(), MarketError>> {
        let r = (|| {
            if !self.gate.tick() {
                return Err(Self::dead("destroy"));
            }
            if let Some(e) = self.roll("destroy") {
                return Err(e);
            }
            if self.sabotage.swallow_destroys {
                return Ok(());
            }
            let res = ready(self.inner.destroy(id));
            self.sync_agents();
            res
        })();
        Box::pin(async move { r })
    }

    fn change_bid(&self, id: VastId, bid: Decimal) -> BoxFuture<'_, Result<(), MarketError>> {
        let r = (|| {
            if !self.gate.tick() {
                return Err(Self::dead("change bid"));
            }
            if let Some(e) = self.roll("change bid") {
                return Err(e);
            }
            let res = ready(self.inner.change_bid(id, bid));
            self.sync_agents();
            res
        })();
        Box::pin(async move { r })
    }

    fn attach_ssh_key<'a>(
        &'a self,
        id: VastId,
        public_key: &'a str,
    ) -> BoxFuture<'a, Result<(), MarketError>> {
        let r = (|| {
            if !self.gate.tick() {
                return Err(Self::dead("attach ssh key"));
            }
            if let Some(e) = self.roll("attach ssh key") {
                return Err(e);
            }
            ready(self.inner.attach_ssh_key(id, public_key))
        })();
        Box::pin(async move { r })
    }

    fn endpoint(&self, id: VastId) -> BoxFuture<'_, Result<Option<Endpoint>, MarketError>> {
        let r = if self.gate.crashed() {
            Err(Self::dead("get"))
        } else {
            ready(self.inner.endpoint(id))
        };
        Box::pin(async move { r })
    }
}

/// What a restart does to the journal (sabotage for the checker's own test).
pub type Tamper = Box<dyn Fn(&mut EngineState) + Send + Sync>;

/// A [`MemoryJournal`] that a crash freezes: writes after the kill never land.
pub struct CrashJournal {
    inner: MemoryJournal,
    gate: Arc<CrashGate>,
    tamper: Mutex<Option<Tamper>>,
    pub saves: std::sync::atomic::AtomicU64,
}

impl CrashJournal {
    pub fn new(gate: Arc<CrashGate>) -> Self {
        Self {
            inner: MemoryJournal::default(),
            gate,
            tamper: Mutex::new(None),
            saves: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Apply `f` to the state the next load returns (once).
    pub fn tamper_next_load(&self, f: Tamper) {
        *self.tamper.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

impl Journal for CrashJournal {
    fn load(&self) -> BoxFuture<'_, Result<Option<EngineState>, JournalError>> {
        let r = ready(self.inner.load()).map(|mut s| {
            if let Some(f) = self.tamper.lock().unwrap_or_else(|p| p.into_inner()).take()
                && let Some(st) = s.as_mut()
            {
                f(st);
            }
            s
        });
        Box::pin(async move { r })
    }

    fn save<'a>(&'a self, state: &'a EngineState) -> BoxFuture<'a, Result<(), JournalError>> {
        let r = if self.gate.tick() {
            self.saves
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ready(self.inner.save(state))
        } else {
            Err(JournalError::Write {
                path: "memory".into(),
                msg: "the scheduler process was killed".into(),
            })
        };
        Box::pin(async move { r })
    }
}
