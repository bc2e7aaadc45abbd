//! How long one pure reconcile pass takes on large worlds (no I/O): queued jobs to place
//! against live offers, and a busy world of running jobs with heartbeats.
//!
//! `cargo bench -p scheduler --bench reconcile`

use std::time::Instant;

use rust_decimal::Decimal;
use scheduler::reconcile::*;

fn job(id: i64, exp: &str) -> JobView {
    JobView::queued(
        id,
        exp,
        format!("j{id}"),
        "true",
        JobReq {
            gpus: 1 + (id % 2) as u32,
            gpu_name: None,
            min_gpu_ram_gb: None,
            disk_gb: 20.0,
            image: "img".into(),
            max_dph: None,
            interruptible: id % 3 == 0,
            checkpoints: id % 3 == 0,
            est_runtime_s: 3600,
        },
    )
}

fn offer(i: i64) -> OfferObs {
    let price = Decimal::new(20 + (i * 7919 % 300), 2);
    OfferObs {
        offer_id: i,
        machine_id: i,
        num_gpus: [1, 2, 4, 8][(i % 4) as usize],
        gpu_name: "RTX 4090".into(),
        gpu_ram_gb: 24.0,
        dph_total: price,
        dph_base: price,
        storage_cost: Decimal::new(1, 1),
        min_bid: price / Decimal::TWO,
        disk_space_gb: 200.0,
        dlperf: 50.0 + (i % 100) as f64,
        reliability: 0.99,
        rented: false,
        seen_ms: 0,
    }
}

fn time(label: &str, w: &WorldView, obs: &Observations, cfg: &ReconcileConfig) {
    let runs = 3;
    let mut best = f64::MAX;
    let mut n = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let acts = reconcile(w, obs, 1_000, cfg);
        best = best.min(t.elapsed().as_secs_f64());
        n = acts.len();
    }
    println!("{label:<58} {:>9.1} ms  ({n} actions)", best * 1000.0);
}

fn main() {
    for (jobs, offers) in [(1_000, 2_000), (10_000, 20_000)] {
        let mut w = WorldView::new("bench");
        for i in 1..=jobs {
            w.jobs.insert(i, job(i, &format!("e{}", i % 10)));
        }
        for e in 0..10 {
            w.budgets.insert(
                format!("e{e}"),
                BudgetView {
                    limit: Decimal::from(1_000_000),
                    warn_fraction: Decimal::new(8, 1),
                    warned: false,
                    hard_stopped: false,
                },
            );
        }
        let obs = Observations {
            market: Some(vec![]),
            offers: (1..=offers).map(offer).collect(),
            ..Default::default()
        };
        let cfg = ReconcileConfig {
            max_instances: 100_000,
            max_provisions_per_pass: 100_000,
            ..ReconcileConfig::default()
        };
        time(
            &format!("place {jobs} queued jobs on {offers} offers (10 budgets)"),
            &w,
            &obs,
            &cfg,
        );
    }
    // A busy world: every job running on 4-GPU instances, all listed, all heartbeating.
    for jobs in [1_000i64, 10_000] {
        let mut w = WorldView::new("bench");
        let mut listing = Vec::new();
        let mut heartbeats = Vec::new();
        for k in 1..=jobs / 4 {
            w.instances.insert(
                k,
                InstanceView {
                    key: k,
                    label: instance_label("bench", k),
                    vast_id: Some(k),
                    state: InstState::Up,
                    offer: OfferChoice {
                        offer_id: k,
                        machine_id: k,
                        gpus: 4,
                        gpu_name: "RTX 4090".into(),
                        dph: Decimal::ONE,
                        dph_base: Decimal::ONE,
                        storage_cost: Decimal::new(1, 1),
                        bid: None,
                        disk_gb: 20.0,
                        image: "img".into(),
                        dlperf: 100.0,
                    },
                    experiment: "e0".into(),
                    created_ms: 0,
                    state_since_ms: 0,
                    idle_since_ms: None,
                    setup_failures: 0,
                    reason: None,
                },
            );
            listing.push(MarketInstance {
                vast_id: k,
                label: Some(instance_label("bench", k)),
                machine_id: k,
                actual_status: Some("running".into()),
                intended_status: Some("running".into()),
                cur_state: Some("running".into()),
                status_msg: None,
                is_bid: false,
                min_bid: None,
                ssh_ready: true,
            });
        }
        for i in 1..=jobs {
            let mut j = job(i, "e0");
            j.req.gpus = 1;
            j.state = JobState::Running;
            j.instance = Some((i - 1) / 4 + 1);
            j.attempt = Some(AttemptView {
                id: i,
                token: i,
                instance: (i - 1) / 4 + 1,
                started_ms: 0,
                last_heartbeat_ms: Some(900),
                last_seq: 1,
                phase: Some(AgentPhase::Running),
                progress: None,
                token_hash: None,
                gpus: vec![0],
            });
            w.jobs.insert(i, j);
            heartbeats.push(HeartbeatObs {
                job: i,
                token: i,
                seq: 2,
                at_ms: 1_000,
                phase: AgentPhase::Running,
                progress: Some((5, 10)),
                checkpoint_ms: None,
            });
        }
        let obs = Observations {
            market: Some(listing),
            heartbeats,
            ..Default::default()
        };
        time(
            &format!(
                "busy: {jobs} running jobs, {} instances, heartbeats",
                jobs / 4
            ),
            &w,
            &obs,
            &ReconcileConfig::default(),
        );
    }
}
