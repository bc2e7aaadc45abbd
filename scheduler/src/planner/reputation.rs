//! Host reputation learned from our own failures, on top of Vast's `reliability`.
//!
//! The store records a [`FailureEvent`] whenever an instance fails to boot, shows a CUDA/driver
//! mismatch, gets preempted, is too slow on the network, or goes unreachable. [`blacklist`] turns
//! that history into the set of machines (and hosts) not to rent right now, each with an expiry
//! and a reason. It is a pure function of the events and `now`, so the reconciler can recompute
//! it every tick and a replay gives the same answer.
//!
//! Rules (all windows look back from each event, so bans start when the evidence is complete):
//! * a CUDA/driver mismatch bans the machine at once (`cuda_ban_ms`): it will not change soon;
//! * `boot_threshold` boot failures or losses within `window_ms` ban it for `boot_ban_ms`,
//!   doubling with every further failure in the window, up to `max_ban_ms`;
//! * `preempt_threshold` preemptions within `preempt_window_ms` ban it for `preempt_ban_ms`;
//! * `slow_threshold` slow-network reports within `window_ms` ban it for `slow_ban_ms`;
//! * a host is banned while at least `host_machine_threshold` of its machines are.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::types::{Ban, Blacklist};
use crate::clock::EpochMs;

/// What went wrong on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Never became ready: boot timeout, OCI error, `exited`/`unknown`/`offline` while loading.
    BootFailure,
    /// Went unreachable (SSH and heartbeats) while running.
    Unreachable,
    /// The image's CUDA needs a newer driver than the machine has, or the GPU is not usable.
    CudaMismatch,
    /// An interruptible instance of ours was outbid or stopped by the host.
    Preempted,
    /// Transfers far below the advertised bandwidth.
    SlowNetwork,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureEvent {
    pub at_ms: EpochMs,
    pub machine_id: i64,
    pub host_id: i64,
    pub kind: FailureKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationConfig {
    pub window_ms: i64,
    pub boot_threshold: u32,
    pub boot_ban_ms: i64,
    pub max_ban_ms: i64,
    pub cuda_ban_ms: i64,
    pub preempt_window_ms: i64,
    pub preempt_threshold: u32,
    pub preempt_ban_ms: i64,
    pub slow_threshold: u32,
    pub slow_ban_ms: i64,
    pub host_machine_threshold: u32,
}

const HOUR: i64 = 3_600_000;

impl ReputationConfig {
    /// How long an event can still matter: the longest look-back of a rule plus the longest ban
    /// it can start. Dropping older events changes no ban.
    pub fn memory_ms(&self) -> i64 {
        let look_back = self.window_ms.max(self.preempt_window_ms);
        let ban = self
            .max_ban_ms
            .max(self.cuda_ban_ms)
            .max(self.preempt_ban_ms)
            .max(self.slow_ban_ms);
        look_back.saturating_add(ban)
    }
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            window_ms: 24 * HOUR,
            boot_threshold: 2,
            boot_ban_ms: 6 * HOUR,
            max_ban_ms: 7 * 24 * HOUR,
            cuda_ban_ms: 7 * 24 * HOUR,
            preempt_window_ms: 6 * HOUR,
            preempt_threshold: 3,
            preempt_ban_ms: 12 * HOUR,
            slow_threshold: 3,
            slow_ban_ms: 12 * HOUR,
            host_machine_threshold: 2,
        }
    }
}

/// Counts events of one rule within a sliding window.
struct Window {
    span: i64,
    times: VecDeque<EpochMs>,
}

impl Window {
    fn new(span: i64) -> Self {
        Self {
            span,
            times: VecDeque::new(),
        }
    }
    fn push(&mut self, t: EpochMs) -> u32 {
        self.times.push_back(t);
        while self.times.front().is_some_and(|&f| f <= t - self.span) {
            self.times.pop_front();
        }
        self.times.len() as u32
    }
}

/// The machines and hosts banned at `now_ms`. Events after `now_ms` are ignored; input order does
/// not matter.
pub fn blacklist(events: &[FailureEvent], now_ms: EpochMs, cfg: &ReputationConfig) -> Blacklist {
    let mut by_machine: BTreeMap<i64, Vec<&FailureEvent>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.at_ms <= now_ms) {
        by_machine.entry(e.machine_id).or_default().push(e);
    }
    let mut out = Blacklist::default();
    let mut host_of: BTreeMap<i64, i64> = BTreeMap::new();
    for (machine, mut evs) in by_machine {
        evs.sort_by_key(|e| (e.at_ms, e.kind, e.host_id));
        let mut boot = Window::new(cfg.window_ms);
        let mut preempt = Window::new(cfg.preempt_window_ms);
        let mut slow = Window::new(cfg.window_ms);
        let mut ban: Option<Ban> = None;
        for e in &evs {
            host_of.insert(machine, e.host_id);
            let t = e.at_ms;
            let fired = match e.kind {
                FailureKind::CudaMismatch => {
                    Some((cfg.cuda_ban_ms, "CUDA/driver mismatch".to_string()))
                }
                FailureKind::BootFailure | FailureKind::Unreachable => {
                    let n = boot.push(t);
                    (n >= cfg.boot_threshold.max(1)).then(|| {
                        let doublings = (n - cfg.boot_threshold.max(1)).min(32);
                        let d = cfg
                            .boot_ban_ms
                            .saturating_mul(1_i64 << doublings)
                            .min(cfg.max_ban_ms);
                        (
                            d,
                            format!(
                                "{n} boot failures or losses within {} h",
                                cfg.window_ms / HOUR
                            ),
                        )
                    })
                }
                FailureKind::Preempted => {
                    let n = preempt.push(t);
                    (n >= cfg.preempt_threshold.max(1)).then(|| {
                        (
                            cfg.preempt_ban_ms,
                            format!("{n} preemptions within {} h", cfg.preempt_window_ms / HOUR),
                        )
                    })
                }
                FailureKind::SlowNetwork => {
                    let n = slow.push(t);
                    (n >= cfg.slow_threshold.max(1)).then(|| {
                        (
                            cfg.slow_ban_ms,
                            format!("{n} slow-network reports within {} h", cfg.window_ms / HOUR),
                        )
                    })
                }
            };
            if let Some((dur, reason)) = fired {
                let until = t.saturating_add(dur);
                if ban.as_ref().is_none_or(|b| until > b.until_ms) {
                    ban = Some(Ban {
                        until_ms: until,
                        reason,
                    });
                }
            }
        }
        if let Some(b) = ban.filter(|b| b.until_ms > now_ms) {
            out.machines.insert(machine, b);
        }
    }
    // Hosts: banned until fewer than the threshold of their machines are.
    let threshold = cfg.host_machine_threshold.max(1) as usize;
    let mut per_host: BTreeMap<i64, Vec<EpochMs>> = BTreeMap::new();
    for (m, b) in &out.machines {
        if let Some(h) = host_of.get(m) {
            per_host.entry(*h).or_default().push(b.until_ms);
        }
    }
    for (host, mut untils) in per_host {
        if untils.len() >= threshold {
            untils.sort_unstable_by(|a, b| b.cmp(a));
            out.hosts.insert(
                host,
                Ban {
                    until_ms: untils[threshold - 1],
                    reason: format!("{} of its machines are blacklisted", untils.len()),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KINDS: [FailureKind; 5] = [
        FailureKind::BootFailure,
        FailureKind::Unreachable,
        FailureKind::CudaMismatch,
        FailureKind::Preempted,
        FailureKind::SlowNetwork,
    ];

    fn ev(at_h: i64, machine: i64, host: i64, kind: FailureKind) -> FailureEvent {
        FailureEvent {
            at_ms: at_h * HOUR,
            machine_id: machine,
            host_id: host,
            kind,
        }
    }

    #[test]
    fn one_boot_failure_is_forgiven_two_are_not_and_bans_double() {
        let cfg = ReputationConfig::default();
        let one = [ev(0, 1, 10, FailureKind::BootFailure)];
        assert!(blacklist(&one, HOUR, &cfg).machines.is_empty());
        let two = [
            ev(0, 1, 10, FailureKind::BootFailure),
            ev(2, 1, 10, FailureKind::Unreachable),
        ];
        let b = blacklist(&two, 3 * HOUR, &cfg);
        assert_eq!(b.machines[&1].until_ms, 8 * HOUR);
        assert!(b.machines[&1].reason.contains("2 boot failures"));
        // Expired.
        assert!(blacklist(&two, 8 * HOUR, &cfg).machines.is_empty());
        let three = [
            two[0].clone(),
            two[1].clone(),
            ev(4, 1, 10, FailureKind::BootFailure),
        ];
        assert_eq!(
            blacklist(&three, 5 * HOUR, &cfg).machines[&1].until_ms,
            4 * HOUR + 12 * HOUR
        );
        // Outside the window they do not add up.
        let apart = [
            ev(0, 1, 10, FailureKind::BootFailure),
            ev(30, 1, 10, FailureKind::BootFailure),
        ];
        assert!(blacklist(&apart, 31 * HOUR, &cfg).machines.is_empty());
    }

    #[test]
    fn cuda_mismatch_bans_at_once_and_preemptions_need_three() {
        let cfg = ReputationConfig::default();
        let b = blacklist(&[ev(5, 2, 20, FailureKind::CudaMismatch)], 6 * HOUR, &cfg);
        assert_eq!(b.machines[&2].until_ms, 5 * HOUR + 7 * 24 * HOUR);
        let p: Vec<_> = (0..3)
            .map(|i| ev(i, 3, 30, FailureKind::Preempted))
            .collect();
        assert!(blacklist(&p[..2], 3 * HOUR, &cfg).machines.is_empty());
        assert_eq!(
            blacklist(&p, 3 * HOUR, &cfg).machines[&3].until_ms,
            2 * HOUR + 12 * HOUR
        );
    }

    #[test]
    fn host_is_banned_while_two_machines_are_and_future_events_are_ignored() {
        let cfg = ReputationConfig::default();
        let evs = [
            ev(0, 1, 9, FailureKind::CudaMismatch),
            ev(1, 2, 9, FailureKind::CudaMismatch),
            ev(1, 3, 8, FailureKind::CudaMismatch),
            ev(100, 4, 8, FailureKind::CudaMismatch),
        ];
        let b = blacklist(&evs, 2 * HOUR, &cfg);
        assert_eq!(
            b.hosts[&9].until_ms,
            7 * 24 * HOUR,
            "until the first of the two expires"
        );
        assert!(!b.hosts.contains_key(&8));
        assert!(!b.machines.contains_key(&4));
        assert!(b.blocks(77, 9, 3 * HOUR));
    }

    proptest! {
        #[test]
        fn order_of_events_does_not_matter(
            raw in prop::collection::vec((0i64..48, 0i64..4, 0u8..5), 0..40),
            rot in 0usize..40,
        ) {
            let evs: Vec<_> = raw.iter().map(|&(h, m, k)| ev(h, m, m / 2, KINDS[k as usize])).collect();
            let mut shuffled = evs.clone();
            if !shuffled.is_empty() {
                let r = rot % shuffled.len();
                shuffled.rotate_left(r);
                shuffled.reverse();
            }
            let cfg = ReputationConfig::default();
            let a = blacklist(&evs, 40 * HOUR, &cfg);
            prop_assert_eq!(&a, &blacklist(&shuffled, 40 * HOUR, &cfg));
            for b in a.machines.values() {
                prop_assert!(b.until_ms > 40 * HOUR);
            }
        }

        #[test]
        fn events_older_than_the_memory_change_no_ban(
            raw in prop::collection::vec((0i64..400, 0i64..3, 0u8..5), 0..40),
            now_h in 0i64..400,
        ) {
            let evs: Vec<_> = raw.iter().map(|&(h, m, k)| ev(h, m, m, KINDS[k as usize])).collect();
            let cfg = ReputationConfig::default();
            let now = now_h * HOUR;
            let kept: Vec<_> = evs.iter().filter(|e| now - e.at_ms < cfg.memory_ms()).cloned().collect();
            prop_assert_eq!(blacklist(&evs, now, &cfg), blacklist(&kept, now, &cfg));
        }
    }
}
