//! The pure reconciler: `reconcile(world, observations, now, config) -> actions`.
//!
//! One pass looks at the market listing (adopt, orphans, boot timeouts, failures, outbid
//! pauses), then the agents' heartbeats (progress, checkpoints to pull, ends, silence), then
//! budgets, then places queued work on free slots or new offers (with `crate::planner::plan`),
//! then tears down idle instances. Each emitted action is applied to a working copy with
//! [`Outcome::Planned`], so later decisions in the pass see earlier ones. Nothing here reads a
//! clock or a random source.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;
use crate::planner::Blacklist;
use crate::planner::reputation::{self, FailureKind, ReputationConfig};

use super::model::*;
use super::transition::{Outcome, apply};

/// Knobs of the control loop. Times in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileConfig {
    /// Booting (and waiting for SSH) longer than this fails the instance.
    pub boot_timeout_ms: i64,
    /// Setting up (key, agent, code) longer than this fails the instance.
    pub setup_timeout_ms: i64,
    pub max_setup_failures: u32,
    /// The agents' heartbeat interval: silence for two of them is a lost attempt.
    pub heartbeat_interval_ms: i64,
    /// A started attempt with no first heartbeat for this long is lost.
    pub start_timeout_ms: i64,
    /// An empty instance is destroyed after this long.
    pub idle_timeout_ms: i64,
    /// A journaled purchase that never shows up in the listing is given up after this long.
    pub provision_grace_ms: i64,
    /// A booting instance missing from the listing is only called gone after this long
    /// (the listing can lag a fresh purchase).
    pub listing_grace_ms: i64,
    /// Destroy again when the listing still shows an instance this long after the destroy.
    pub destroy_retry_ms: i64,
    pub max_instances: usize,
    /// Most $/h for all our instances together.
    pub max_total_dph: Option<Decimal>,
    pub max_provisions_per_pass: usize,
    pub backoff_initial_ms: i64,
    pub backoff_max_ms: i64,
    /// A job interrupted this many times is failed.
    pub max_interruptions: u32,
    /// The margin a bid may carry over `min_bid`: bid = min_bid × (1 + margin) where that costs
    /// less than the work it saves from preemption, else `min_bid` (see `PlanConfig::bid_margin_pct`).
    pub bid_margin: Decimal,
    /// Longest wait for an outbid instance that holds unpulled work.
    pub outbid_max_wait_ms: i64,
    pub accrual_interval_ms: i64,
    /// Worst-case cost reserved per job = share price × estimated hours × this.
    pub reservation_factor: Decimal,
    /// Interruptible cost penalty for expected lost work (0.1 = +10 %).
    pub interruptible_penalty: Decimal,
    pub min_reliability: f64,
    /// Finish the queue by this time on the cheapest capacity that can, instead of renting
    /// for every queued job at once (see `planner::pace`). `None`: no deadline.
    #[serde(default)]
    pub deadline_ms: Option<EpochMs>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            boot_timeout_ms: 600_000,
            setup_timeout_ms: 300_000,
            max_setup_failures: 3,
            heartbeat_interval_ms: 10_000,
            start_timeout_ms: 120_000,
            idle_timeout_ms: 300_000,
            provision_grace_ms: 120_000,
            listing_grace_ms: 60_000,
            destroy_retry_ms: 30_000,
            max_instances: 8,
            max_total_dph: None,
            max_provisions_per_pass: 8,
            backoff_initial_ms: 30_000,
            backoff_max_ms: 600_000,
            max_interruptions: 20,
            bid_margin: Decimal::new(10, 2),
            outbid_max_wait_ms: 600_000,
            accrual_interval_ms: 10_000,
            reservation_factor: Decimal::new(15, 1),
            interruptible_penalty: Decimal::new(10, 2),
            min_reliability: 0.0,
            deadline_ms: None,
        }
    }
}

impl ReconcileConfig {
    /// Retry delay before failed attempt number `n` (1-based) is retried: doubling, capped.
    pub fn backoff_ms(&self, n: u32) -> i64 {
        let shift = n.saturating_sub(1).min(30);
        self.backoff_initial_ms
            .saturating_mul(1_i64 << shift)
            .min(self.backoff_max_ms)
    }
}

/// How the market's status fields read for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Null, created, loading, scheduling, rebooting, …: wait (with a timeout).
    Provisioning,
    Running,
    /// Stopped (or frozen): outbid when interruptible.
    Paused,
    /// Will never reach running.
    Failed(String),
    Gone,
}

/// Read Vast's `actual_status` / `intended_status` / `status_msg` (vast-api.md §4.5–4.6).
/// Unknown values are treated as still provisioning, as Vast adds states without notice.
pub fn classify(m: &MarketInstance) -> Health {
    let actual = m
        .actual_status
        .as_deref()
        .unwrap_or("")
        .to_ascii_lowercase();
    let msg = m.status_msg.as_deref().unwrap_or("").to_ascii_lowercase();
    let oci = msg.contains("oci runtime") || msg.contains("oci error");
    match actual.as_str() {
        "running" if m.intended_status.as_deref() == Some("stopped") => Health::Paused,
        "running" => Health::Running,
        "stopped" | "frozen" => Health::Paused,
        "exited" | "unknown" | "offline" => Health::Failed(format!(
            "instance {} is {actual}{}",
            m.vast_id,
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        )),
        "destroyed" => Health::Gone,
        _ if oci => Health::Failed(format!("instance {} failed to start: {msg}", m.vast_id)),
        _ => Health::Provisioning,
    }
}

/// Round a price up to Vast's 3 decimals.
fn price_up(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(3, rust_decimal::RoundingStrategy::AwayFromZero)
}

fn nano(d: Decimal) -> i64 {
    (d * Decimal::from(crate::planner::NANO_PER_DOLLAR))
        .round()
        .to_i64()
        .unwrap_or(i64::MAX)
}

fn from_nano(n: i64) -> Decimal {
    Decimal::from(n) / Decimal::from(crate::planner::NANO_PER_DOLLAR)
}

/// What the outbid judgement needs to know, in our terms.
#[derive(Debug, Clone, PartialEq)]
pub struct OutbidSituation {
    pub now_ms: EpochMs,
    pub paused_since_ms: EpochMs,
    pub offer: OfferChoice,
    /// The market's winning price now (`min_bid`), whole instance.
    pub winning_bid: Option<Decimal>,
    /// Estimated seconds of work left for the jobs held on it (the largest).
    pub remaining_s: i64,
    pub checkpoints: bool,
    /// Wall seconds of work the held jobs had done on this instance when it was paused (the
    /// largest): what a job without checkpoints loses either way.
    pub done_s: i64,
    /// Age of the newest checkpoint on the instance's disk / of the one we pulled, seconds.
    pub local_checkpoint_age_s: i64,
    pub pulled_checkpoint_age_s: Option<i64>,
    /// The best other offer: (price $/h, dlperf).
    pub alternative: Option<(Decimal, f64)>,
    /// The most the jobs allow per GPU-hour (their `max_dph` per GPU), if any says.
    pub cap_per_gpu: Option<Decimal>,
}

/// The outbid judgement for a paused interruptible instance, made by the planner's
/// [`crate::planner::bid_decision`]: raise the bid within the caps, wait while moving would
/// throw away more work than resuming here, or move.
pub fn outbid_decision(s: &OutbidSituation, cfg: &ReconcileConfig) -> (BidMove, String) {
    let pc = crate::planner::PlanConfig {
        bid_margin_pct: (cfg.bid_margin * Decimal::from(100)).to_u32().unwrap_or(10),
        outbid_max_wait_s: u32::try_from(cfg.outbid_max_wait_ms / 1000).unwrap_or(u32::MAX),
        outbid_recheck_s: 1,
        bid_cap_per_gpu: s.cap_per_gpu.map(nano),
        ..crate::planner::PlanConfig::default()
    };
    let o = &s.offer;
    let storage_dph = Decimal::from_f64_retain(o.disk_gb).unwrap_or_default() * o.storage_cost
        / Decimal::from(720);
    let our_bid = o.bid.unwrap_or(o.dph_base);
    let on_demand = if o.dph_base > Decimal::ZERO {
        o.dph_base
    } else {
        o.dph
    };
    let input = crate::planner::Outbid {
        now_ms: s.now_ms,
        paused_since_ms: s.paused_since_ms,
        our_bid: nano(our_bid),
        winning_bid: nano(s.winning_bid.unwrap_or(our_bid)),
        on_demand_dph: nano(on_demand),
        num_gpus: o.gpus.max(1),
        storage_dph: nano(storage_dph),
        remaining_s: s.remaining_s.max(0),
        checkpoints: s.checkpoints,
        done_s: s.done_s.max(0),
        local_checkpoint_age_s: s.local_checkpoint_age_s.max(0),
        pulled_checkpoint_age_s: s.pulled_checkpoint_age_s.map(|a| a.max(0)),
        alternative: s
            .alternative
            .map(|(price, dlperf)| crate::planner::Alternative {
                dph: nano(price),
                boot_s: 120,
                relative_speed_ppm: if o.dlperf > 0.0 && dlperf > 0.0 {
                    (dlperf / o.dlperf * 1e6) as i64
                } else {
                    1_000_000
                },
            }),
    };
    let d = crate::planner::bid_decision(&input, &pc);
    let mv = match d.action {
        crate::planner::BidAction::Raise { bid } => BidMove::Raise(price_up(from_nano(bid))),
        crate::planner::BidAction::Wait { .. } => BidMove::Wait,
        crate::planner::BidAction::Move => BidMove::Move,
    };
    (mv, d.why)
}

/// The pass under construction: the emitted actions and the working copy they were applied to.
struct Pass<'a> {
    w: WorldView,
    now: EpochMs,
    cfg: &'a ReconcileConfig,
    offers: Vec<OfferObs>,
    /// Some job is held (interrupted) for its instance: only then look for them per instance.
    held_somewhere: bool,
    /// Machines banned now, from `w.machine_failures`.
    banned: Blacklist,
    out: Vec<Action>,
}

/// The machines banned at `now` for the failures in `w`, by the default rules of
/// `planner::reputation` (the same rules decide how long `apply` keeps a failure). Per machine
/// only: the listing does not tell us hosts.
fn banned(w: &WorldView, now: EpochMs) -> Blacklist {
    let mut b = reputation::blacklist(&w.machine_failures, now, &ReputationConfig::default());
    b.hosts.clear();
    b
}

impl Pass<'_> {
    fn emit(&mut self, a: Action) {
        apply(&mut self.w, &a, &Outcome::Planned, self.now);
        if matches!(a, Action::MachineFailed { .. }) {
            self.banned = banned(&self.w, self.now);
        }
        self.out.push(a);
    }

    fn inst(&self, key: InstanceKey) -> Option<&InstanceView> {
        self.w.instances.get(&key)
    }

    /// End the attempts of every job running on an instance that was lost or paused.
    fn interrupt_jobs_on(&mut self, key: InstanceKey, reason: &str, hold: bool) {
        let jobs: Vec<(JobId, JobState, u32)> = self
            .w
            .jobs_on(key)
            .map(|j| (j.id, j.state, j.interruptions))
            .collect();
        for (id, state, interruptions) in jobs {
            if !matches!(state, JobState::Starting | JobState::Running) {
                continue;
            }
            let give_up = interruptions + 1 >= self.cfg.max_interruptions;
            self.emit(Action::EndAttempt {
                job: id,
                end: AttemptEnd::Interrupted {
                    reason: reason.to_string(),
                },
                requeue_at: if give_up { None } else { Some(self.now) },
                hold: hold && !give_up,
            });
        }
    }

    fn fail_instance(&mut self, key: InstanceKey, reason: String, blacklist: bool) {
        let Some(inst) = self.inst(key) else { return };
        let (machine_id, vast_id) = (inst.offer.machine_id, inst.vast_id);
        self.interrupt_jobs_on(key, &reason, false);
        self.emit(Action::MarkInstance {
            key,
            state: InstState::Failed,
            reason: Some(reason.clone()),
        });
        if blacklist {
            self.emit(Action::MachineFailed {
                machine_id,
                kind: FailureKind::BootFailure,
                reason: reason.clone(),
            });
        }
        if vast_id.is_some() {
            self.emit(Action::Destroy {
                key,
                vast_id,
                reason,
            });
        }
    }

    // ---- 1. the market listing ---------------------------------------------------------------

    fn market(&mut self, listing: &[MarketInstance]) {
        let ws = self.w.workspace.clone();
        let prefix = label_prefix(&ws);
        let mut listed: Vec<&MarketInstance> = listing
            .iter()
            .filter(|m| m.label.as_deref().is_some_and(|l| l.starts_with(&prefix)))
            .collect();
        listed.sort_by_key(|m| m.vast_id);
        let mut seen: BTreeSet<InstanceKey> = BTreeSet::new();
        for m in listed {
            let label = m.label.clone().unwrap_or_default();
            let Some(key) = parse_label(&ws, &label) else {
                self.emit(Action::DestroyOrphan {
                    vast_id: m.vast_id,
                    label,
                });
                continue;
            };
            let Some(inst) = self.inst(key).cloned() else {
                self.emit(Action::DestroyOrphan {
                    vast_id: m.vast_id,
                    label,
                });
                continue;
            };
            match inst.vast_id {
                None => self.emit(Action::Adopt {
                    key,
                    vast_id: m.vast_id,
                }),
                Some(v) if v != m.vast_id => {
                    // A second purchase under one label: never ours to keep.
                    self.emit(Action::DestroyOrphan {
                        vast_id: m.vast_id,
                        label,
                    });
                    continue;
                }
                Some(_) => {}
            }
            seen.insert(key);
            self.observe_instance(key, m);
        }
        let keys: Vec<InstanceKey> = self.w.instances.keys().copied().collect();
        for key in keys {
            if seen.contains(&key) {
                continue;
            }
            let Some(inst) = self.inst(key).cloned() else {
                continue;
            };
            match (inst.state, inst.vast_id) {
                (InstState::Gone, _) => {}
                (InstState::Destroying | InstState::Failed, _) => {
                    self.emit(Action::MarkInstance {
                        key,
                        state: InstState::Gone,
                        reason: None,
                    });
                }
                (InstState::Requested, None) => {
                    if self.now - inst.created_ms >= self.cfg.provision_grace_ms {
                        self.emit(Action::MarkInstance {
                            key,
                            state: InstState::Gone,
                            reason: Some("the purchase never appeared on the account".into()),
                        });
                    }
                }
                (InstState::Requested | InstState::Booting, Some(_))
                    if self.now - inst.created_ms < self.cfg.listing_grace_ms => {}
                (_, _) => {
                    let reason = format!(
                        "instance {} vanished from the account",
                        inst.vast_id.unwrap_or_default()
                    );
                    self.interrupt_jobs_on(key, &reason, false);
                    self.emit(Action::MarkInstance {
                        key,
                        state: InstState::Gone,
                        reason: Some(reason),
                    });
                }
            }
        }
    }

    fn observe_instance(&mut self, key: InstanceKey, m: &MarketInstance) {
        let Some(inst) = self.inst(key).cloned() else {
            return;
        };
        let health = classify(m);
        let now = self.now;
        match inst.state {
            InstState::Gone => {
                // Resurrected after a destroy.
                self.emit(Action::Destroy {
                    key,
                    vast_id: Some(m.vast_id),
                    reason: "listed again after destroy".into(),
                });
            }
            InstState::Destroying => {
                if now - inst.state_since_ms >= self.cfg.destroy_retry_ms {
                    self.emit(Action::Destroy {
                        key,
                        vast_id: Some(m.vast_id),
                        reason: "still listed after destroy".into(),
                    });
                }
            }
            InstState::Failed => {
                self.emit(Action::Destroy {
                    key,
                    vast_id: Some(m.vast_id),
                    reason: inst.reason.clone().unwrap_or_else(|| "failed".into()),
                });
            }
            _ => match health {
                Health::Gone => {
                    let reason = format!("instance {} was destroyed", m.vast_id);
                    self.interrupt_jobs_on(key, &reason, false);
                    self.emit(Action::MarkInstance {
                        key,
                        state: InstState::Gone,
                        reason: Some(reason),
                    });
                }
                Health::Failed(reason) => {
                    let blacklist = matches!(inst.state, InstState::Requested | InstState::Booting);
                    self.fail_instance(key, reason, blacklist);
                }
                Health::Provisioning => match inst.state {
                    InstState::Requested | InstState::Booting => {
                        if now - inst.created_ms >= self.cfg.boot_timeout_ms {
                            let reason = format!(
                                "instance {} did not boot within {} s",
                                m.vast_id,
                                self.cfg.boot_timeout_ms / 1000
                            );
                            self.fail_instance(key, reason, true);
                        }
                    }
                    // Rebooting/restarting under us: the agent died with the container.
                    _ => {
                        if now - inst.state_since_ms >= self.cfg.boot_timeout_ms {
                            self.fail_instance(
                                key,
                                format!("instance {} stuck restarting", m.vast_id),
                                false,
                            );
                        }
                    }
                },
                Health::Running => self.running(&inst, m),
                Health::Paused => self.paused(&inst, m),
            },
        }
    }

    fn running(&mut self, inst: &InstanceView, m: &MarketInstance) {
        let key = inst.key;
        let now = self.now;
        match inst.state {
            InstState::Requested | InstState::Booting => {
                if m.ssh_ready {
                    self.emit(Action::MarkInstance {
                        key,
                        state: InstState::Ready,
                        reason: None,
                    });
                    self.emit(Action::Setup { key });
                } else if now - inst.created_ms >= self.cfg.boot_timeout_ms {
                    let reason = format!("instance {} never answered on SSH", m.vast_id);
                    self.fail_instance(key, reason, true);
                }
            }
            InstState::Ready => {
                if inst.setup_failures >= self.cfg.max_setup_failures
                    || now - inst.state_since_ms >= self.cfg.setup_timeout_ms
                {
                    let reason = format!(
                        "setup of instance {} failed: {}",
                        m.vast_id,
                        inst.reason.clone().unwrap_or_else(|| "timed out".into())
                    );
                    self.fail_instance(key, reason, true);
                } else {
                    self.emit(Action::Setup { key });
                }
            }
            InstState::Paused => {
                // Priority came back: the container restarted, the agent did not.
                self.emit(Action::MarkInstance {
                    key,
                    state: InstState::Ready,
                    reason: Some("resumed after outbid".into()),
                });
                self.emit(Action::Setup { key });
            }
            InstState::Up => {
                if !self.held_somewhere {
                    return;
                }
                // Resume held jobs here, pulling first what the instance wrote while paused.
                let held: Vec<(JobId, bool)> = self
                    .w
                    .jobs_on(key)
                    .filter(|j| j.state == JobState::Interrupted)
                    .map(|j| (j.id, j.checkpoint_reported_ms > j.checkpoint_pulled_ms))
                    .collect();
                for (job, unpulled) in held {
                    if unpulled {
                        self.emit(Action::Pull {
                            job,
                            key,
                            kind: PullKind::Checkpoint,
                        });
                    }
                    self.emit(Action::Place { job, key });
                }
            }
            InstState::Destroying | InstState::Gone | InstState::Failed => {}
        }
    }

    fn paused(&mut self, inst: &InstanceView, m: &MarketInstance) {
        let key = inst.key;
        if !m.is_bid {
            // An on-demand rental stopped by the host (its duration ran out): it will not
            // come back by itself.
            let reason = format!("instance {} was stopped by the host", m.vast_id);
            self.fail_instance(key, reason, false);
            return;
        }
        // Work done by the attempts the pause interrupts, measured before they are ended. On
        // later passes the attempts are gone: bound it by the instance's life until the pause.
        let done_at_pause = self
            .w
            .jobs_on(key)
            .filter_map(|j| j.attempt.as_ref())
            .map(|a| (a.last_heartbeat_ms.unwrap_or(a.started_ms) - a.started_ms) / 1000)
            .max();
        if inst.state != InstState::Paused {
            let reason = format!("instance {} was outbid", m.vast_id);
            self.interrupt_jobs_on(key, &reason, true);
            self.emit(Action::MarkInstance {
                key,
                state: InstState::Paused,
                reason: Some(reason),
            });
        }
        let Some(inst) = self.inst(key).cloned() else {
            return;
        };
        let held: Vec<&JobView> = self.w.jobs_on(key).collect();
        if held.is_empty() {
            self.emit(Action::Destroy {
                key,
                vast_id: inst.vast_id,
                reason: "outbid with nothing to resume".into(),
            });
            return;
        }
        let now = self.now;
        let age = |t: Option<EpochMs>| t.map(|t| ((now - t) / 1000).max(0));
        let remaining_s = held
            .iter()
            .map(|j| i64::try_from(j.req.est_runtime_s).unwrap_or(i64::MAX))
            .max()
            .unwrap_or(0);
        let checkpoints = held.iter().any(|j| j.checkpoint_reported_ms.is_some());
        let local_age = held
            .iter()
            .filter_map(|j| age(j.checkpoint_reported_ms))
            .max()
            .unwrap_or(remaining_s);
        let pulled_age = held
            .iter()
            .map(|j| age(j.checkpoint_pulled_ms))
            .max()
            .flatten();
        let class: Vec<JobView> = held.iter().map(|j| (*j).clone()).collect();
        let alternative = self
            .best_offer(&class, &self.offers)
            .map(|(c, k)| (c.price() / Decimal::from(k.max(1) as u64), c.dlperf));
        let situation = OutbidSituation {
            now_ms: now,
            paused_since_ms: inst.state_since_ms,
            offer: inst.offer.clone(),
            winning_bid: m.min_bid,
            remaining_s,
            checkpoints,
            done_s: done_at_pause
                .unwrap_or((inst.state_since_ms - inst.created_ms) / 1000)
                .max(0),
            local_checkpoint_age_s: local_age,
            pulled_checkpoint_age_s: pulled_age,
            alternative,
            cap_per_gpu: held
                .iter()
                .filter_map(|j| j.req.max_dph.map(|m| m / Decimal::from(j.req.gpus.max(1))))
                .min(),
        };
        let (decision, why) = outbid_decision(&situation, self.cfg);
        match decision {
            BidMove::Raise(bid) => self.emit(Action::ChangeBid {
                key,
                vast_id: m.vast_id,
                bid,
            }),
            BidMove::Wait => {}
            BidMove::Move => self.emit(Action::Destroy {
                key,
                vast_id: Some(m.vast_id),
                reason: format!("outbid, moving the work elsewhere: {why}"),
            }),
        }
    }

    // ---- 2. heartbeats ------------------------------------------------------------------------

    fn heartbeats(&mut self, hbs: &[HeartbeatObs]) {
        let mut hbs: Vec<&HeartbeatObs> = hbs.iter().collect();
        hbs.sort_by_key(|h| (h.job, h.seq));
        for hb in hbs {
            let Some(j) = self.w.jobs.get(&hb.job) else {
                continue;
            };
            let Some(a) = &j.attempt else { continue };
            if a.token != hb.token || (hb.seq <= a.last_seq && a.phase.is_some()) {
                continue;
            }
            self.emit(Action::Heartbeat(hb.clone()));
        }
        let active: Vec<JobView> = self
            .w
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Starting | JobState::Running))
            .cloned()
            .collect();
        for j in active {
            let Some(a) = &j.attempt else { continue };
            let key = a.instance;
            let inst_up = self.inst(key).is_some_and(|i| i.state == InstState::Up);
            match &a.phase {
                Some(AgentPhase::Exited { code: 0, .. }) => {
                    self.emit(Action::Pull {
                        job: j.id,
                        key,
                        kind: PullKind::Final,
                    });
                    self.emit(Action::EndAttempt {
                        job: j.id,
                        end: AttemptEnd::Succeeded,
                        requeue_at: None,
                        hold: false,
                    });
                }
                Some(AgentPhase::Exited { code, disk_full }) => {
                    let reason = if *disk_full {
                        format!("exit code {code}: disk full")
                    } else {
                        format!("exit code {code}")
                    };
                    self.emit(Action::Pull {
                        job: j.id,
                        key,
                        kind: PullKind::Final,
                    });
                    self.fail_attempt(&j, reason, *disk_full);
                }
                Some(AgentPhase::StartFailed { reason }) => {
                    self.fail_attempt(&j, format!("could not start: {reason}"), false);
                }
                Some(AgentPhase::Running) | None => {
                    if j.checkpoint_reported_ms > j.checkpoint_pulled_ms && inst_up {
                        self.emit(Action::Pull {
                            job: j.id,
                            key,
                            kind: PullKind::Checkpoint,
                        });
                    }
                    let last = a.last_heartbeat_ms.unwrap_or(a.started_ms);
                    let limit = if a.last_heartbeat_ms.is_none() {
                        self.cfg.start_timeout_ms
                    } else {
                        2 * self.cfg.heartbeat_interval_ms
                    };
                    if inst_up && self.now - last > limit {
                        let reason = format!("no heartbeat for {} s", (self.now - last) / 1000);
                        self.emit(Action::StopAttempt {
                            job: j.id,
                            key,
                            token: a.token,
                        });
                        let give_up = j.interruptions + 1 >= self.cfg.max_interruptions;
                        self.emit(Action::EndAttempt {
                            job: j.id,
                            end: AttemptEnd::Interrupted { reason },
                            requeue_at: if give_up { None } else { Some(self.now) },
                            hold: false,
                        });
                    }
                }
            }
        }
    }

    fn fail_attempt(&mut self, j: &JobView, reason: String, disk_full: bool) {
        let n = j.failures + 1;
        let requeue_at = (n < j.max_attempts).then(|| self.now + self.cfg.backoff_ms(n));
        self.emit(Action::EndAttempt {
            job: j.id,
            end: AttemptEnd::Failed { reason, disk_full },
            requeue_at,
            hold: false,
        });
    }

    // ---- 3. budgets ---------------------------------------------------------------------------

    fn budgets(&mut self, spend: &BTreeMap<String, Decimal>) {
        let budgets: Vec<(String, BudgetView)> = self
            .w
            .budgets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (exp, b) in budgets {
            let spent = spend.get(&exp).copied().unwrap_or_default();
            let has_work = self
                .w
                .jobs
                .values()
                .any(|j| j.experiment == exp && j.instance.is_some() && !j.state.is_terminal());
            if spent >= b.limit && (has_work || !b.hard_stopped) {
                if !b.hard_stopped {
                    self.emit(Action::BudgetHardStop {
                        experiment: exp.clone(),
                        spent,
                        limit: b.limit,
                    });
                }
                self.hard_stop(&exp);
            } else if !b.warned && spent >= b.limit * b.warn_fraction {
                self.emit(Action::BudgetWarn {
                    experiment: exp,
                    spent,
                    limit: b.limit,
                });
            }
        }
    }

    /// Checkpoint and pull, stop, requeue (held), and destroy what only this experiment used.
    fn hard_stop(&mut self, exp: &str) {
        let jobs: Vec<JobView> = self
            .w
            .jobs
            .values()
            .filter(|j| j.experiment == exp && j.instance.is_some() && !j.state.is_terminal())
            .cloned()
            .collect();
        let mut touched: BTreeSet<InstanceKey> = BTreeSet::new();
        for j in jobs {
            let key = j.instance.unwrap_or_default();
            touched.insert(key);
            let up = self.inst(key).is_some_and(|i| i.state == InstState::Up);
            if let Some(a) = &j.attempt
                && up
            {
                self.emit(Action::Pull {
                    job: j.id,
                    key,
                    kind: PullKind::Checkpoint,
                });
                self.emit(Action::StopAttempt {
                    job: j.id,
                    key,
                    token: a.token,
                });
            }
            self.emit(Action::EndAttempt {
                job: j.id,
                end: AttemptEnd::BudgetStopped,
                requeue_at: None,
                hold: false,
            });
        }
        let keys: Vec<InstanceKey> = self
            .w
            .instances
            .values()
            .filter(|i| {
                !matches!(i.state, InstState::Gone | InstState::Destroying)
                    && (touched.contains(&i.key) || i.experiment == exp)
            })
            .map(|i| i.key)
            .collect();
        for key in keys {
            if self.w.jobs_on(key).next().is_some() {
                continue; // another experiment still uses it
            }
            let Some(inst) = self.inst(key) else { continue };
            let vast_id = inst.vast_id;
            if vast_id.is_some() {
                self.emit(Action::Destroy {
                    key,
                    vast_id,
                    reason: format!("budget of {exp} exhausted"),
                });
            }
        }
    }

    // ---- 4. start what is placed ------------------------------------------------------------

    fn start_placed(&mut self) {
        let placed: Vec<(JobId, InstanceKey, bool)> = self
            .w
            .jobs
            .values()
            .filter(|j| j.state == JobState::Placed)
            .filter_map(|j| {
                j.instance
                    .map(|k| (j.id, k, j.checkpoint_pulled_ms.is_some()))
            })
            .collect();
        for (job, key, resume) in placed {
            if self.inst(key).is_some_and(|i| i.state == InstState::Up) {
                self.emit(Action::StartAttempt { job, key, resume });
            }
        }
    }

    // ---- 5. placement -------------------------------------------------------------------------

    fn worst_case(&self, j: &JobView, share: Decimal, dlperf: f64) -> Decimal {
        share * hours(j.req.est_runtime_s, dlperf) * self.cfg.reservation_factor
    }

    /// Place queued jobs with the planner ([`crate::planner::plan`]): warm instances of ours with
    /// free GPUs first, then new offers chosen by expected cost per job (speed-scaled, packed onto
    /// multi-GPU offers when their $/GPU-h is lower, interruptible at `min_bid` + margin when the
    /// job allows it). Budgets are reservations: what running work may still cost is taken off
    /// what is left before the planner reserves the worst case of new work. Jobs the planner
    /// defers keep their reason (shown by `status` as why they wait).
    fn place(&mut self, offers: &[OfferObs], spend: &BTreeMap<String, Decimal>) {
        use crate::planner as pl;
        let queued: Vec<JobView> = self
            .w
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued && j.not_before_ms <= self.now)
            .cloned()
            .collect();
        if queued.is_empty() {
            return;
        }
        // What placed and running work holds: GPUs and disk per instance, worst case per budget.
        let mut reserved: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut used: BTreeMap<InstanceKey, (u32, f64)> = BTreeMap::new();
        for j in self.w.jobs.values() {
            let Some(key) = j.instance else { continue };
            if j.state.is_terminal() {
                continue;
            }
            let u = used.entry(key).or_default();
            u.0 += j.req.gpus;
            u.1 += j.disk_gb();
            if let Some(inst) = self.inst(key) {
                *reserved.entry(j.experiment.clone()).or_default() +=
                    self.worst_case(j, share_price(inst, j.req.gpus), inst.offer.dlperf);
            }
        }
        // 1. jobs, one requirement class per distinct search.
        let mut classes: BTreeMap<pl::ClassKey, JobView> = BTreeMap::new();
        let mut jobs: Vec<pl::PlanJob> = Vec::with_capacity(queued.len());
        for j in &queued {
            let class = class_key(j);
            classes.entry(class.clone()).or_insert_with(|| j.clone());
            jobs.push(pl::PlanJob {
                id: j.id,
                experiment: j.experiment.clone(),
                class,
                image: j.req.image.clone(),
                gpus: j.req.gpus,
                disk_gb: disk_u32(j.disk_gb()),
                max_dph: j.req.max_dph.map(nano),
                interruptible: if j.req.interruptible {
                    pl::InterruptiblePolicy::Always
                } else {
                    pl::InterruptiblePolicy::Never
                },
                checkpoints: j.resumes(),
                checkpoint_interval_s: 0,
                est_runtime_s: j.req.est_runtime_s,
                max_runtime_s: None,
                priority: 0,
                // An interruption of a job that resumes from pulled checkpoints loses little:
                // three of them count as one attempt towards moving it on demand.
                attempts_so_far: j
                    .failures
                    .saturating_add(if j.checkpoint_pulled_ms.is_some() {
                        j.interruptions / 3
                    } else {
                        j.interruptions
                    }),
            });
        }
        // 2. offers per class, only those still free for us (see `Holdings::allows`).
        let live: Vec<&InstanceView> = self
            .w
            .instances
            .values()
            .filter(|i| i.state != InstState::Gone)
            .collect();
        let live_count = live.len();
        let total_dph: Decimal = live.iter().map(|i| i.offer.price()).sum();
        let held = self.holdings();
        let mut plan_offers: Vec<pl::PlanOffer> = Vec::new();
        let mut offer_obs: Vec<&OfferObs> = Vec::new();
        let mut index: BTreeMap<i64, usize> = BTreeMap::new();
        let mut offers_by_class: BTreeMap<pl::ClassKey, Vec<usize>> = BTreeMap::new();
        for (class, rep) in &classes {
            let mut idx = Vec::new();
            for o in offers {
                if !held.allows(o) || !offer_matches(rep, o) {
                    continue;
                }
                let i = match index.get(&o.offer_id) {
                    Some(i) => *i,
                    None => {
                        plan_offers.push(plan_offer(o));
                        offer_obs.push(o);
                        index.insert(o.offer_id, plan_offers.len() - 1);
                        plan_offers.len() - 1
                    }
                };
                idx.push(i);
            }
            offers_by_class.insert(class.clone(), idx);
        }
        // Requirement classes an instance of ours can serve.
        let classes_of = |i: &InstanceView| -> Vec<pl::ClassKey> {
            classes
                .iter()
                .filter(|(_, rep)| fits_instance(rep, i))
                .map(|(c, _)| c.clone())
                .collect()
        };
        // 3. instances of ours with free GPUs (booting ones too: their boot is already paid).
        let idle: Vec<pl::IdleInstance> = live
            .iter()
            .filter(|i| {
                matches!(
                    i.state,
                    InstState::Requested | InstState::Booting | InstState::Ready | InstState::Up
                )
            })
            .filter_map(|i| {
                let (g, d) = used.get(&i.key).copied().unwrap_or_default();
                let free_gpus = i.offer.gpus.saturating_sub(g);
                let inst_classes = classes_of(i);
                (free_gpus > 0 && !inst_classes.is_empty()).then(|| pl::IdleInstance {
                    id: i.key,
                    machine_id: i.offer.machine_id,
                    host_id: 0,
                    image: i.offer.image.clone(),
                    gpu_name: i.offer.gpu_name.clone(),
                    num_gpus: i.offer.gpus,
                    free_gpus,
                    disk_free_gb: disk_u32((i.offer.disk_gb - d).max(0.0)),
                    dph: nano(i.offer.price()),
                    dlperf: i.offer.dlperf,
                    interruptible: i.offer.bid.is_some(),
                    preempt_per_h: f64::NAN,
                    classes: inst_classes,
                    busy_until_ms: self.busy_until(i),
                })
            })
            .collect();
        // 4. budgets left, blacklist, headroom.
        let budgets: BTreeMap<String, pl::Nano> = self
            .w
            .budgets
            .iter()
            .map(|(exp, b)| {
                let left = b.limit
                    - spend.get(exp).copied().unwrap_or_default()
                    - reserved.get(exp).copied().unwrap_or_default();
                (exp.clone(), nano(left.max(Decimal::ZERO)))
            })
            .collect();
        let blacklist = self.banned.clone();
        let headroom = self
            .cfg
            .max_instances
            .saturating_sub(live_count)
            .min(self.cfg.max_provisions_per_pass);
        // Boot and setup estimates cannot exceed the timeouts that would fail the instance; a
        // restart after a preemption is a boot and a setup again.
        let defaults = pl::PlanConfig::default();
        let secs = |ms: i64| u32::try_from((ms / 1000).max(1)).unwrap_or(u32::MAX);
        let boot_s = defaults.default_boot_s.min(secs(self.cfg.boot_timeout_ms));
        let setup_s = defaults
            .boot_overhead_s
            .min(secs(self.cfg.setup_timeout_ms));
        let config = pl::PlanConfig {
            default_boot_s: boot_s,
            boot_overhead_s: setup_s,
            restart_overhead_s: defaults
                .restart_overhead_s
                .min(boot_s.saturating_add(setup_s)),
            bid_margin_pct: pct(self.cfg.bid_margin).unwrap_or(10),
            max_instances: u32::try_from(headroom).unwrap_or(u32::MAX),
            max_total_dph: self
                .cfg
                .max_total_dph
                .map(|m| nano((m - total_dph).max(Decimal::ZERO))),
            min_reliability: self.cfg.min_reliability,
            ref_dlperf_per_gpu: REF_DLPERF_PER_GPU,
            runtime_safety_pct: pct(self.cfg.reservation_factor).unwrap_or(150),
            outbid_max_wait_s: u32::try_from(self.cfg.outbid_max_wait_ms / 1000)
                .unwrap_or(u32::MAX),
            ..defaults
        };
        let pace = self.cfg.deadline_ms.map(|deadline_ms| pl::Pace {
            deadline_ms,
            held: live
                .iter()
                .filter(|i| {
                    !matches!(
                        i.state,
                        InstState::Failed | InstState::Destroying | InstState::Gone
                    )
                })
                .map(|i| pl::HeldInstance {
                    gpu_name: i.offer.gpu_name.clone(),
                    dlperf: i.offer.dlperf,
                    num_gpus: i.offer.gpus,
                    dph: nano(i.offer.price()),
                    interruptible: i.offer.bid.is_some(),
                    work_left_ref_gpu_s: self.work_left_on(i),
                    classes: classes_of(i),
                })
                .collect(),
        });
        let input = pl::PlanInput {
            now_ms: self.now,
            jobs,
            offers: plan_offers,
            offers_by_class,
            idle,
            throughput: pl::Throughput::default(),
            budgets,
            blacklist,
            config,
            pace,
        };
        let plan = pl::plan(&input);
        // Carry it out: reuse, then rentals (journaled with their label, then their jobs).
        for r in &plan.reuse {
            self.emit(Action::Place {
                job: r.job.job_id,
                key: r.instance_id,
            });
        }
        for r in &plan.rent {
            let Some(o) = index.get(&r.offer_id).map(|&i| offer_obs[i]) else {
                continue;
            };
            let Some(first) = r.jobs.first() else {
                continue;
            };
            let experiment = self
                .w
                .jobs
                .get(&first.job_id)
                .map(|j| j.experiment.clone())
                .unwrap_or_default();
            let disk_gb = f64::from(r.disk_gb);
            let storage_dph = o.storage_cost * Decimal::from(r.disk_gb) / Decimal::from(720);
            let offer = OfferChoice {
                offer_id: o.offer_id,
                machine_id: o.machine_id,
                gpus: o.num_gpus,
                gpu_name: o.gpu_name.clone(),
                dph: if o.dph_base > Decimal::ZERO {
                    o.dph_base + storage_dph
                } else {
                    o.dph_total
                },
                dph_base: o.dph_base,
                storage_cost: o.storage_cost,
                bid: match r.kind {
                    pl::RentalKind::OnDemand => None,
                    pl::RentalKind::Interruptible { bid } => Some(price_up(from_nano(bid))),
                },
                disk_gb,
                image: r.image.clone(),
                dlperf: o.dlperf,
            };
            let key = self.w.next_instance_key();
            let label = instance_label(&self.w.workspace, key);
            self.emit(Action::Provision {
                key,
                label,
                offer,
                experiment,
            });
            for j in &r.jobs {
                self.emit(Action::Place { job: j.job_id, key });
            }
        }
        // Say why the rest waits. With no offers observed at all (the search failed or was not
        // made this pass) there is nothing to say about offers.
        for d in &plan.deferred {
            if offers.is_empty()
                && matches!(
                    d.reason,
                    pl::DeferReason::NoOfferFits { .. } | pl::DeferReason::OffersExhausted { .. }
                )
            {
                continue;
            }
            let Some(j) = self.w.jobs.get(&d.job_id).cloned() else {
                continue;
            };
            let reason = match &d.reason {
                pl::DeferReason::OverBudget { .. }
                | pl::DeferReason::NoOfferFits { .. }
                | pl::DeferReason::BlacklistedOnly { .. }
                | pl::DeferReason::OverMaxDph { .. }
                | pl::DeferReason::Invalid { .. } => format!("waiting: {}", d.reason),
                _ => d.reason.to_string(),
            };
            self.note(&j, reason);
        }
    }

    /// Per-GPU speed of an instance relative to the reference GPU.
    fn per_gpu_speed(i: &InstanceView) -> f64 {
        if i.offer.dlperf > 0.0 {
            i.offer.dlperf / f64::from(i.offer.gpus.max(1)) / REF_DLPERF_PER_GPU
        } else {
            1.0
        }
    }

    /// (GPUs, reference seconds left) of each unfinished job on `i`: its estimate less what its
    /// current attempt has done at the instance's speed (pacing needs only rough figures; they
    /// are recomputed every pass).
    fn jobs_left_on<'s>(&'s self, i: &'s InstanceView) -> impl Iterator<Item = (u32, f64)> + 's {
        let speed = Self::per_gpu_speed(i);
        self.w
            .jobs
            .values()
            .filter(move |j| j.instance == Some(i.key) && !j.state.is_terminal())
            .map(move |j| {
                let done_s = j.attempt.as_ref().map_or(0.0, |a| {
                    (self.now - a.started_ms).max(0) as f64 / 1000.0 * speed
                });
                (j.req.gpus, (j.req.est_runtime_s as f64 - done_s).max(0.0))
            })
    }

    /// Reference GPU-seconds the jobs on `i` still have to do.
    fn work_left_on(&self, i: &InstanceView) -> u64 {
        self.jobs_left_on(i)
            .map(|(g, left)| (left as u64).saturating_mul(u64::from(g)))
            .sum()
    }

    /// When the jobs on `i` should be done (0: none runs there).
    fn busy_until(&self, i: &InstanceView) -> EpochMs {
        let speed = Self::per_gpu_speed(i).max(1e-6);
        self.jobs_left_on(i)
            .map(|(_, left)| self.now + (left / speed * 1000.0) as i64)
            .max()
            .unwrap_or(0)
    }

    /// Whether an offer can host a job of this class at all.
    fn offer_fits(&self, j: &JobView, o: &OfferObs) -> bool {
        !(self.banned.blocks(o.machine_id, 0, self.now)
            || o.reliability < self.cfg.min_reliability
            || o.num_gpus < j.req.gpus
            || o.disk_space_gb < j.disk_gb()
            || j.req
                .gpu_name
                .as_deref()
                .is_some_and(|g| !gpu_matches(g, &o.gpu_name))
            || j.req.min_gpu_ram_gb.is_some_and(|r| o.gpu_ram_gb < r))
    }

    /// Expected cost per job of running `n` jobs of this class on `o` (as many as fit), with
    /// the choice it would make: (cost per job, offer id, jobs it takes, choice).
    fn rank_offer(
        &self,
        j: &JobView,
        o: &OfferObs,
        n: usize,
    ) -> Option<(Decimal, i64, usize, OfferChoice)> {
        let slots = (o.num_gpus / j.req.gpus.max(1)) as usize;
        let k = slots.min(n).max(1);
        // At `min_bid`, as the planner bids unless a margin pays for itself (rare: see
        // `planner::pack::bid_levels`); the penalty stands for the expected lost work.
        let bid = if j.req.interruptible {
            let b = price_up(o.min_bid);
            (b < o.dph_total).then_some(b)
        } else {
            None
        };
        let price = bid.unwrap_or(o.dph_total);
        let share = price / Decimal::from(k as u64);
        if j.req.max_dph.is_some_and(|m| share > m) {
            return None;
        }
        let penalty = if bid.is_some() {
            Decimal::ONE + self.cfg.interruptible_penalty
        } else {
            Decimal::ONE
        };
        let per_job = share * hours(j.req.est_runtime_s, o.dlperf) * penalty;
        let choice = OfferChoice {
            offer_id: o.offer_id,
            machine_id: o.machine_id,
            gpus: o.num_gpus,
            gpu_name: o.gpu_name.clone(),
            dph: o.dph_total,
            dph_base: o.dph_base,
            storage_cost: o.storage_cost,
            bid,
            disk_gb: j.disk_gb(),
            image: j.req.image.clone(),
            dlperf: o.dlperf,
        };
        Some((per_job, o.offer_id, k, choice))
    }

    /// Say why a job waits (once: only when the reason changes).
    fn note(&mut self, j: &JobView, reason: String) {
        let current = self.w.jobs.get(&j.id).and_then(|j| j.reason.clone());
        if current.as_deref() != Some(reason.as_str()) {
            self.emit(Action::Note { job: j.id, reason });
        }
    }

    /// The offers and machines of our live instances.
    fn holdings(&self) -> Holdings {
        let mut held = Holdings::default();
        for i in self.w.instances.values() {
            if i.state != InstState::Gone {
                held.offers.insert(i.offer.offer_id);
                let t = held
                    .machines
                    .entry(i.offer.machine_id)
                    .or_insert(i.created_ms);
                *t = (*t).max(i.created_ms);
            }
        }
        held
    }

    /// The cheapest unclaimed offer for this class of jobs, and how many of them it takes.
    fn best_offer(&self, class: &[JobView], offers: &[OfferObs]) -> Option<(OfferChoice, usize)> {
        let j = class.first()?;
        let held = self.holdings();
        offers
            .iter()
            .filter(|o| held.allows(o) && self.offer_fits(j, o))
            .filter_map(|o| self.rank_offer(j, o, class.len()))
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, _, k, c)| (c, k))
    }

    // ---- 6. idle teardown -----------------------------------------------------------------------

    fn idle(&mut self) {
        let busy: BTreeSet<InstanceKey> = self
            .w
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .filter_map(|j| j.instance)
            .collect();
        let idle: Vec<(InstanceKey, Option<VastId>)> = self
            .w
            .instances
            .values()
            .filter(|i| {
                matches!(
                    i.state,
                    InstState::Booting | InstState::Ready | InstState::Up
                ) && i.vast_id.is_some()
            })
            .filter(|i| !busy.contains(&i.key))
            .filter(|i| {
                self.now - i.idle_since_ms.unwrap_or(i.state_since_ms) >= self.cfg.idle_timeout_ms
            })
            .map(|i| (i.key, i.vast_id))
            .collect();
        for (key, vast_id) in idle {
            self.emit(Action::Destroy {
                key,
                vast_id,
                reason: "idle".into(),
            });
        }
    }

    // ---- 7. reports and accrual ---------------------------------------------------------------

    fn reports(&mut self) {
        let mut exps: BTreeMap<String, bool> = BTreeMap::new();
        for j in self.w.jobs.values() {
            let done = exps.entry(j.experiment.clone()).or_insert(true);
            *done &= j.state.is_terminal();
        }
        for (exp, done) in exps {
            if !done || self.w.reported.contains(&exp) {
                continue;
            }
            let busy = self
                .w
                .instances
                .values()
                .any(|i| i.state != InstState::Gone && i.experiment == exp);
            if !busy {
                self.emit(Action::FinalReport { experiment: exp });
            }
        }
    }
}

fn gpu_matches(wanted: &str, have: &str) -> bool {
    let norm = |s: &str| s.replace([' ', '_'], "").to_ascii_lowercase();
    norm(wanted) == norm(have)
}

fn fits_instance(j: &JobView, inst: &InstanceView) -> bool {
    inst.offer.image == j.req.image
        && inst.offer.disk_gb >= j.disk_gb()
        && j.req
            .gpu_name
            .as_deref()
            .is_none_or(|g| gpu_matches(g, &inst.offer.gpu_name))
}

fn share_price(inst: &InstanceView, gpus: u32) -> Decimal {
    inst.offer.price() * Decimal::from(gpus) / Decimal::from(inst.offer.gpus.max(1))
}

/// Estimated hours on a GPU of this dlperf (reference: 100).
fn hours(est_runtime_s: u64, dlperf: f64) -> Decimal {
    let speed = if dlperf > 0.0 { dlperf / 100.0 } else { 1.0 };
    let h = est_runtime_s as f64 / 3600.0 / speed;
    Decimal::from_f64_retain(h).unwrap_or_default().round_dp(6)
}

/// `dlperf` of the reference GPU that [`JobReq::est_runtime_s`] is measured against. The
/// planner's default reference is 40 (one RTX 4090); the reconciler's convention is 100.
pub const REF_DLPERF_PER_GPU: f64 = 100.0;

/// The planner's requirement class of a job: the fields of its offer search.
fn class_key(j: &JobView) -> String {
    format!(
        "gpus={} gpu={} ram={} disk={} image={}",
        j.req.gpus,
        j.req.gpu_name.as_deref().unwrap_or("*"),
        j.req.min_gpu_ram_gb.map_or("*".into(), |r| r.to_string()),
        j.disk_gb(),
        j.req.image
    )
}

/// Whether an offer answers a job's search (GPUs, model, memory, disk). Blacklist and
/// reliability are left to the planner so that its deferral says why.
fn offer_matches(j: &JobView, o: &OfferObs) -> bool {
    o.num_gpus >= j.req.gpus
        && o.disk_space_gb >= j.disk_gb()
        && j.req
            .gpu_name
            .as_deref()
            .is_none_or(|g| gpu_matches(g, &o.gpu_name))
        && j.req.min_gpu_ram_gb.is_none_or(|r| o.gpu_ram_gb >= r)
}

/// What our live instances were rented from: which offers are still free for us.
#[derive(Default)]
struct Holdings {
    offers: BTreeSet<i64>,
    /// Machine → when we last rented there.
    machines: BTreeMap<i64, EpochMs>,
}

impl Holdings {
    /// An offer we hold is not rented again. On a machine where we hold an instance the offer
    /// must list only free GPUs (not `rented`: taking GPUs from interruptible renters could take
    /// ours, the lowest bid there), and come from a search after our latest rental there (an
    /// older one may list the GPUs we took since).
    fn allows(&self, o: &OfferObs) -> bool {
        !self.offers.contains(&o.offer_id)
            && self
                .machines
                .get(&o.machine_id)
                .is_none_or(|&rented_ms| !o.rented && o.seen_ms > rented_ms)
    }
}

/// An observed offer as the planner takes it.
fn plan_offer(o: &OfferObs) -> crate::planner::PlanOffer {
    crate::planner::PlanOffer {
        id: o.offer_id,
        machine_id: o.machine_id,
        host_id: 0,
        gpu_name: o.gpu_name.clone(),
        num_gpus: o.num_gpus,
        dph_base: nano(if o.dph_base > Decimal::ZERO {
            o.dph_base
        } else {
            o.dph_total
        }),
        storage_gb_h: nano(o.storage_cost / Decimal::from(720)),
        disk_space_gb: if o.disk_space_gb.is_finite() && o.disk_space_gb > 0.0 {
            o.disk_space_gb.floor().min(f64::from(u32::MAX)) as u32
        } else {
            0
        },
        min_bid: (o.min_bid > Decimal::ZERO).then(|| nano(o.min_bid)),
        dlperf: o.dlperf,
        reliability: o.reliability,
        boot_estimate_s: 0,
        preempt_per_h: f64::NAN,
        rented: o.rented,
    }
}

/// A need in GB as a whole number for the planner, rounded up.
fn disk_u32(gb: f64) -> u32 {
    if gb.is_finite() && gb > 0.0 {
        gb.ceil().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// A fraction as whole percent (0.1 -> 10, 1.5 -> 150).
fn pct(d: Decimal) -> Option<u32> {
    (d * Decimal::from(100)).round().to_u32()
}

/// One reconcile pass: the actions to take now, in order.
pub fn reconcile(
    world: &WorldView,
    obs: &Observations,
    now: EpochMs,
    cfg: &ReconcileConfig,
) -> Vec<Action> {
    let mut p = Pass {
        w: world.clone(),
        now,
        cfg,
        offers: obs.offers.clone(),
        held_somewhere: world
            .jobs
            .values()
            .any(|j| j.state == JobState::Interrupted),
        banned: banned(world, now),
        out: Vec::new(),
    };
    if let Some(listing) = &obs.market {
        p.market(listing);
    }
    p.heartbeats(&obs.heartbeats);
    p.budgets(&obs.spend);
    p.start_placed();
    p.place(&obs.offers, &obs.spend);
    p.start_placed();
    p.idle();
    if p.w
        .last_accrual_ms
        .is_none_or(|t| now - t >= cfg.accrual_interval_ms)
    {
        p.emit(Action::Accrue);
    }
    p.reports();
    p.out
}
