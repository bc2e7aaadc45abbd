//! Scenario tests and properties of the planner as a whole.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::synth::{Shape, market};
use super::*;

const D: i64 = NANO_PER_DOLLAR;

fn offer(id: i64, gpu: &str, num_gpus: u32, dph_cents: i64, dlperf: f64) -> PlanOffer {
    PlanOffer {
        id,
        machine_id: id * 10,
        host_id: id * 100,
        gpu_name: gpu.into(),
        num_gpus,
        dph_base: dph_cents * D / 100,
        storage_gb_h: 0,
        disk_space_gb: 1000,
        min_bid: None,
        dlperf,
        reliability: 0.99,
        boot_estimate_s: 100,
        preempt_per_h: 0.05,
        rented: false,
    }
}

/// An on-demand instance of ours (GPU "g", image "img", class "c") with every GPU free.
fn idle(id: i64, num_gpus: u32, dph_cents: i64, dlperf: f64) -> IdleInstance {
    IdleInstance {
        id,
        machine_id: id * 10,
        host_id: id * 100,
        image: "img".into(),
        gpu_name: "g".into(),
        num_gpus,
        free_gpus: num_gpus,
        disk_free_gb: 100,
        dph: dph_cents * D / 100,
        dlperf,
        interruptible: false,
        preempt_per_h: 0.0,
        classes: vec!["c".into()],
        busy_until_ms: 0,
    }
}

/// The same kind of instance as pacing sees it, with work still to do on it.
fn held(num_gpus: u32, dph_cents: i64, dlperf: f64, work_left_ref_gpu_s: u64) -> HeldInstance {
    HeldInstance {
        gpu_name: "g".into(),
        dlperf,
        num_gpus,
        dph: dph_cents * D / 100,
        interruptible: false,
        work_left_ref_gpu_s,
        classes: vec!["c".into()],
    }
}

fn job(id: i64, hours: u64) -> PlanJob {
    PlanJob {
        id,
        experiment: "exp".into(),
        class: "c".into(),
        image: "img".into(),
        gpus: 1,
        disk_gb: 10,
        max_dph: None,
        interruptible: InterruptiblePolicy::Never,
        checkpoints: false,
        checkpoint_interval_s: 0,
        est_runtime_s: hours * 3600,
        max_runtime_s: None,
        priority: 0,
        attempts_so_far: 0,
    }
}

fn input(jobs: Vec<PlanJob>, offers: Vec<PlanOffer>) -> PlanInput {
    let all = (0..offers.len()).collect();
    PlanInput {
        now_ms: 1_000,
        jobs,
        offers,
        offers_by_class: BTreeMap::from([("c".to_string(), all)]),
        // dlperf 30 per GPU is the reference in these tests.
        config: PlanConfig {
            boot_overhead_s: 0,
            ref_dlperf_per_gpu: 30.0,
            ..PlanConfig::default()
        },
        ..PlanInput::default()
    }
}

fn rented_offers(p: &Plan) -> Vec<i64> {
    p.rent.iter().map(|r| r.offer_id).collect()
}

#[test]
fn a_faster_gpu_at_a_higher_hourly_price_wins_when_cheaper_per_job() {
    // 10 reference hours: $0.30/h at reference speed costs $3.00; $0.50/h at 3× costs $1.67.
    let inp = input(
        vec![job(1, 10)],
        vec![offer(1, "slow", 1, 30, 30.0), offer(2, "fast", 1, 50, 90.0)],
    );
    let p = plan(&inp);
    assert_eq!(rented_offers(&p), vec![2]);
    assert!(p.deferred.is_empty());
    // At $1.20/h the fast one costs $4.00 per job: the slow one wins.
    let inp = input(
        vec![job(1, 10)],
        vec![
            offer(1, "slow", 1, 30, 30.0),
            offer(2, "fast", 1, 120, 90.0),
        ],
    );
    assert_eq!(rented_offers(&plan(&inp)), vec![1]);
}

#[test]
fn measured_throughput_overrides_dlperf() {
    let mut inp = input(
        vec![job(1, 10)],
        vec![offer(1, "slow", 1, 30, 30.0), offer(2, "fast", 1, 50, 90.0)],
    );
    // Earlier attempts on "fast" ran at reference speed, with lots of evidence.
    inp.throughput.by_gpu.insert(
        "fast".into(),
        Measured {
            ref_work_s: 360_000,
            wall_s: 360_000,
        },
    );
    assert_eq!(rented_offers(&plan(&inp)), vec![1]);
}

#[test]
fn packs_onto_a_multi_gpu_offer_when_its_gpu_hour_is_cheaper() {
    let singles = (1..=4).map(|i| offer(i, "g", 1, 40, 30.0));
    let offers: Vec<_> = singles.chain([offer(9, "g", 4, 120, 120.0)]).collect();
    let jobs: Vec<_> = (1..=4).map(|i| job(i, 5)).collect();
    let p = plan(&input(jobs.clone(), offers.clone()));
    assert_eq!(rented_offers(&p), vec![9]);
    assert_eq!(p.rent[0].jobs.len(), 4);
    assert_eq!(p.rent[0].disk_gb, 40, "room for a job on every slot");

    // At $0.50/GPU-hour the singles win.
    let mut dear = offers.clone();
    dear[4].dph_base = 200 * D / 100;
    let p = plan(&input(jobs.clone(), dear));
    assert_eq!(p.rent.len(), 4);
    assert!(p.rent.iter().all(|r| r.num_gpus == 1 && r.jobs.len() == 1));

    // One job alone does not rent four GPUs to use one.
    let p = plan(&input(jobs[..1].to_vec(), offers));
    assert_eq!(p.rent[0].num_gpus, 1);
}

#[test]
fn reuses_a_warm_idle_instance_with_the_same_image_before_renting() {
    let mut warm = idle(77, 2, 80, 60.0);
    warm.free_gpus = 1;
    let mut inp = input(
        vec![job(1, 2), job(2, 2)],
        vec![offer(1, "g", 1, 30, 30.0), offer(2, "g", 1, 30, 30.0)],
    );
    inp.idle = vec![warm.clone()];
    let p = plan(&inp);
    assert_eq!(p.reuse.len(), 1, "only one GPU is free");
    assert_eq!((p.reuse[0].instance_id, p.reuse[0].job.job_id), (77, 1));
    // Its share: $0.40/h for 2 h.
    assert_eq!(p.reuse[0].job.expected_cost, 80 * D / 100);
    assert_eq!(p.rent.len(), 1);
    // Another image: rent instead.
    inp.idle[0].image = "other".into();
    let p = plan(&inp);
    assert!(p.reuse.is_empty());
    assert_eq!(p.rent.len(), 2);
}

#[test]
fn interruptible_only_for_jobs_that_may_be_interrupted_and_bids_min_bid() {
    let mut o = offer(1, "g", 8, 800, 240.0);
    o.min_bid = Some(300 * D / 100);
    let mut jobs = Vec::new();
    for (id, policy, ck) in [
        (1, InterruptiblePolicy::Auto, true),
        (2, InterruptiblePolicy::Auto, false),
        (3, InterruptiblePolicy::Never, true),
        (4, InterruptiblePolicy::Always, false),
    ] {
        let mut j = job(id, 1);
        j.interruptible = policy;
        j.checkpoints = ck;
        j.class = format!("c{id}");
        jobs.push(j);
    }
    let mut inp = input(jobs, vec![]);
    inp.offers_by_class.clear();
    for id in 1..=4 {
        let mut oi = o.clone();
        oi.id = id;
        oi.machine_id = id;
        inp.offers.push(oi);
        inp.offers_by_class
            .insert(format!("c{id}"), vec![id as usize - 1]);
    }
    let p = plan(&inp);
    let kind_of = |job_id| {
        p.rent
            .iter()
            .find(|r| r.jobs.iter().any(|j| j.job_id == job_id))
            .unwrap()
            .kind
    };
    // A rare preemption (0.05/h) loses less than a 10 % margin would cost: `min_bid` it is.
    let bid = RentalKind::Interruptible { bid: 300 * D / 100 };
    assert_eq!(kind_of(1), bid);
    assert_eq!(kind_of(2), RentalKind::OnDemand);
    assert_eq!(kind_of(3), RentalKind::OnDemand);
    assert_eq!(
        kind_of(4),
        bid,
        "a short job may gamble without checkpoints"
    );

    // A job interrupted too often goes on-demand so that it finishes.
    let mut worn = inp.clone();
    worn.jobs.retain(|j| j.id == 1);
    worn.jobs[0].attempts_so_far = 3;
    assert_eq!(plan(&worn).rent[0].kind, RentalKind::OnDemand);

    // A long job without checkpoints on a flaky market: the lost work makes on-demand cheaper.
    let mut inp = inp.clone();
    inp.jobs.retain(|j| j.id == 4);
    inp.jobs[0].est_runtime_s = 48 * 3600;
    inp.offers[3].preempt_per_h = 0.5;
    assert_eq!(plan(&inp).rent[0].kind, RentalKind::OnDemand);
}

#[test]
fn budgets_are_reservations_of_the_worst_case() {
    // 10 h at $1/h, worst case 15 h + boot: needs a bit over $15.
    let mut inp = input(
        vec![job(1, 10), job(2, 10)],
        vec![offer(1, "g", 1, 100, 30.0), offer(2, "g", 1, 100, 30.0)],
    );
    inp.budgets.insert("exp".into(), 20 * D);
    let p = plan(&inp);
    assert_eq!(p.rent.len(), 1);
    assert!(p.rent[0].jobs[0].reserved <= 20 * D);
    assert_eq!(p.rent[0].worst_case_cost, p.rent[0].jobs[0].reserved);
    let reason = &p.deferred[0].reason;
    assert!(
        matches!(reason, DeferReason::OverBudget { .. }),
        "{reason:?}"
    );
    assert!(
        reason
            .to_string()
            .starts_with("over budget: experiment \"exp\" has $4.97"),
        "{reason}"
    );
}

#[test]
fn deferral_reasons_say_what_blocked() {
    // max-dph
    let mut j = job(1, 1);
    j.max_dph = Some(20 * D / 100);
    let p = plan(&input(vec![j], vec![offer(1, "g", 1, 30, 30.0)]));
    assert_eq!(
        p.deferred[0].reason,
        DeferReason::OverMaxDph {
            cheapest: 30 * D / 100,
            cap: 20 * D / 100
        }
    );
    assert!(p.deferred[0].reason.to_string().contains("$0.3000/h"));

    // nothing fits: too few GPUs
    let mut j = job(1, 1);
    j.gpus = 2;
    let p = plan(&input(vec![j], vec![offer(1, "g", 1, 30, 30.0)]));
    assert!(
        matches!(&p.deferred[0].reason, DeferReason::NoOfferFits { detail, .. } if detail.contains("2 GPU")),
        "{:?}",
        p.deferred
    );

    // blacklisted only
    let mut inp = input(vec![job(1, 1)], vec![offer(1, "g", 1, 30, 30.0)]);
    inp.blacklist.machines.insert(
        10,
        Ban {
            until_ms: 5_000,
            reason: "boot".into(),
        },
    );
    let p = plan(&inp);
    assert_eq!(
        p.deferred[0].reason,
        DeferReason::BlacklistedOnly {
            class: "c".into(),
            blacklisted: 1,
            unreliable: 0
        }
    );
    inp.now_ms = 5_000;
    assert_eq!(plan(&inp).rent.len(), 1, "the ban expired");

    // instance cap, then offers exhausted
    let mut inp = input(vec![job(1, 1), job(2, 1)], vec![offer(1, "g", 1, 30, 30.0)]);
    assert_eq!(
        plan(&inp).deferred[0].reason,
        DeferReason::OffersExhausted { class: "c".into() }
    );
    inp.offers.push(offer(2, "g", 1, 30, 30.0));
    inp.offers_by_class.insert("c".into(), vec![0, 1]);
    inp.config.max_instances = 1;
    assert_eq!(
        plan(&inp).deferred[0].reason,
        DeferReason::MaxInstances { limit: 1 }
    );
    inp.config.max_instances = 10;
    inp.config.max_total_dph = Some(50 * D / 100);
    assert_eq!(
        plan(&inp).deferred[0].reason,
        DeferReason::MaxTotalDph {
            limit: 50 * D / 100
        }
    );

    // no search results
    let mut inp = input(vec![job(1, 1)], vec![]);
    inp.offers_by_class.clear();
    assert!(matches!(
        plan(&inp).deferred[0].reason,
        DeferReason::NoOfferFits { .. }
    ));

    // 0 GPUs
    let mut j = job(1, 1);
    j.gpus = 0;
    assert!(matches!(
        plan(&input(vec![j], vec![])).deferred[0].reason,
        DeferReason::Invalid { .. }
    ));
}

#[test]
fn the_bid_margin_is_bought_only_where_lost_work_is_dear() {
    // (preemptions per hour at `min_bid`, checkpoint interval) -> the bid on a $0.30 min_bid.
    let bid_for = |preempt_per_h: f64, interval_s: u32| {
        let mut o = offer(1, "g", 1, 100, 30.0);
        o.min_bid = Some(30 * D / 100);
        o.preempt_per_h = preempt_per_h;
        let mut j = job(1, 10);
        j.interruptible = InterruptiblePolicy::Auto;
        j.checkpoints = true;
        j.checkpoint_interval_s = interval_s;
        let p = plan(&input(vec![j], vec![o]));
        match p.rent[0].kind {
            RentalKind::Interruptible { bid } => bid,
            RentalKind::OnDemand => panic!("on demand: {p:?}"),
        }
    };
    let plain = 30 * D / 100;
    let margin = 33 * D / 100;
    assert_eq!(bid_for(0.05, 1800), plain, "rarely taken");
    assert_eq!(
        bid_for(0.5, 600),
        plain,
        "often taken, but little lost each time"
    );
    // Two preemptions an hour with 3 h between checkpoints: each loses 1.5 h on average, and the
    // margin (assumed to halve the preemptions) saves far more than the 10 % it costs.
    assert_eq!(bid_for(2.0, 3 * 3600), margin, "often taken and much lost");
    assert_eq!(bid_for(2.0, 600), margin, "very often taken");
}

#[test]
fn plans_serialize_to_stable_json_for_dry_runs() {
    let mut o = offer(1, "g", 1, 100, 30.0);
    o.min_bid = Some(40 * D / 100);
    let mut j = job(1, 2);
    j.interruptible = InterruptiblePolicy::Auto;
    j.checkpoints = true;
    let mut expensive = job(2, 2);
    expensive.max_dph = Some(1);
    let p = plan(&input(
        vec![j, expensive],
        vec![o, offer(2, "g", 1, 100, 30.0)],
    ));
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["rent"][0]["kind"]["kind"], "interruptible");
    assert_eq!(v["rent"][0]["kind"]["bid"], 400_000_000);
    assert_eq!(v["deferred"][0]["reason"]["reason"], "over_max_dph");
    let back: Plan = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
}

#[test]
fn higher_priority_jobs_get_the_scarce_offer() {
    let mut hi = job(2, 1);
    hi.priority = 5;
    let p = plan(&input(
        vec![job(1, 1), hi],
        vec![offer(1, "g", 1, 30, 30.0)],
    ));
    assert_eq!(p.rent[0].jobs[0].job_id, 2);
    assert_eq!(p.deferred[0].job_id, 1);
}

#[test]
fn the_baseline_ignores_speed_and_packing_and_bids_exactly_min_bid() {
    let mut cheap_slow = offer(1, "slow", 1, 30, 30.0);
    cheap_slow.min_bid = Some(10 * D / 100);
    let offers = vec![
        cheap_slow,
        offer(2, "fast", 1, 50, 90.0),
        offer(3, "g", 4, 100, 120.0),
    ];
    let mut j = job(1, 10);
    j.interruptible = InterruptiblePolicy::Auto;
    j.checkpoints = true;
    let inp = input(vec![j, job(2, 10)], offers);
    let b = naive_baseline(&inp);
    assert_eq!(b.rent.len(), 2);
    assert_eq!(
        b.rent[0].kind,
        RentalKind::Interruptible { bid: 10 * D / 100 }
    );
    assert_eq!(b.rent[0].offer_id, 1);
    assert_eq!(b.rent[1].offer_id, 2, "cheapest hourly left for job 2");
    let lb = lower_bound(&inp);
    assert_eq!(lb.per_job.len(), 2);
    // Job 1 lower bound: min_bid $0.10/h × 10 h = $1. Job 2: 4-GPU at $0.25/GPU-h and speed 1: $2.50
    // vs fast $0.50/h at speed 3: $1.666…
    assert_eq!(lb.per_job[0], (1, D));
    assert_eq!(lb.per_job[1], (2, 1_666_666_666));
    assert!(plan(&inp).expected_cost() >= lb.total);
}

fn small_shape(jobs: usize) -> Shape {
    Shape {
        jobs,
        offers: jobs * 2 + 5,
        classes: 4,
        experiments: 4,
        idle: 3,
    }
}

/// Checks every invariant the reconciler relies on.
fn check_plan(inp: &PlanInput, p: &Plan) -> Result<(), TestCaseError> {
    let jobs: BTreeMap<i64, &PlanJob> = inp.jobs.iter().map(|j| (j.id, j)).collect();
    // Every job exactly once: placed or deferred.
    let mut seen = BTreeSet::new();
    for id in p
        .placed_job_ids()
        .into_iter()
        .chain(p.deferred.iter().map(|d| d.job_id))
    {
        prop_assert!(seen.insert(id), "job {} appears twice", id);
    }
    prop_assert_eq!(seen.len(), inp.jobs.len());
    // Offers at most once, never blacklisted, GPU counts respected, caps respected.
    let offers: BTreeMap<i64, &PlanOffer> = inp.offers.iter().map(|o| (o.id, o)).collect();
    let mut used = BTreeSet::new();
    prop_assert!(p.rent.len() <= inp.config.max_instances as usize);
    if let Some(cap) = inp.config.max_total_dph {
        prop_assert!(p.new_dph() <= cap);
    }
    let mut reserved: BTreeMap<&str, Nano> = BTreeMap::new();
    for r in &p.rent {
        prop_assert!(used.insert(r.offer_id), "offer {} rented twice", r.offer_id);
        let o = offers[&r.offer_id];
        prop_assert!(!inp.blacklist.blocks(o.machine_id, o.host_id, inp.now_ms));
        prop_assert!(r.jobs.iter().map(|j| j.gpus).sum::<u32>() <= o.num_gpus);
        prop_assert!(r.disk_gb <= o.disk_space_gb);
        prop_assert!(r.worst_case_cost <= saturating_sum(r.jobs.iter().map(|j| j.reserved)));
        prop_assert!(r.expected_cost <= r.worst_case_cost);
        if let RentalKind::Interruptible { bid } = r.kind {
            prop_assert!(bid >= o.min_bid.unwrap());
            prop_assert_eq!(bid % inp.config.bid_tick, 0);
        }
        for pj in &r.jobs {
            let j = jobs[&pj.job_id];
            prop_assert!(j.class == r.class && j.image == r.image);
            if matches!(r.kind, RentalKind::Interruptible { .. }) {
                prop_assert!(
                    interruptible_allowed(j, &inp.config),
                    "job {} may not be interrupted",
                    j.id
                );
            }
            if let Some(cap) = j.max_dph {
                let share = i128::from(r.dph) * i128::from(j.gpus) / i128::from(r.num_gpus);
                prop_assert!(share <= i128::from(cap));
            }
            let e = reserved.entry(j.experiment.as_str()).or_default();
            *e = e.saturating_add(pj.reserved);
        }
    }
    let idle: BTreeMap<i64, &IdleInstance> = inp.idle.iter().map(|i| (i.id, i)).collect();
    let mut idle_gpus: BTreeMap<i64, u32> = BTreeMap::new();
    for u in &p.reuse {
        let i = idle[&u.instance_id];
        let j = jobs[&u.job.job_id];
        prop_assert!(i.image == j.image && i.classes.contains(&j.class));
        prop_assert!(!i.interruptible || interruptible_allowed(j, &inp.config));
        *idle_gpus.entry(i.id).or_default() += u.job.gpus;
        prop_assert!(idle_gpus[&i.id] <= i.free_gpus);
        let e = reserved.entry(j.experiment.as_str()).or_default();
        *e = e.saturating_add(u.job.reserved);
    }
    for (exp, r) in reserved {
        if let Some(b) = inp.budgets.get(exp) {
            prop_assert!(r <= *b, "experiment {} reserved {} of {}", exp, r, b);
        }
    }
    // Never below the lower bound.
    let lb = lower_bound(inp);
    let placed: BTreeSet<i64> = p.placed_job_ids().into_iter().collect();
    let lb_placed = saturating_sum(
        lb.per_job
            .iter()
            .filter(|(id, _)| placed.contains(id))
            .map(|(_, c)| *c),
    );
    prop_assert!(
        p.expected_cost() >= lb_placed,
        "plan {} below lower bound {}",
        p.expected_cost(),
        lb_placed
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn plans_keep_every_invariant(seed in any::<u64>(), n in 1usize..120, tight in any::<bool>()) {
        let mut inp = market(seed, small_shape(n));
        if tight {
            inp.config.max_instances = (n / 3) as u32;
            inp.config.max_total_dph = Some(20 * D);
            for b in inp.budgets.values_mut() {
                *b /= 40;
            }
        }
        let p = plan(&inp);
        check_plan(&inp, &p)?;
        // Deterministic, and independent of the order jobs are listed in.
        prop_assert_eq!(&p, &plan(&inp.clone()));
        let mut shuffled = inp.clone();
        shuffled.jobs.reverse();
        let k = seed as usize % shuffled.jobs.len();
        shuffled.jobs.rotate_left(k);
        prop_assert_eq!(&p, &plan(&shuffled));
    }

    #[test]
    fn extreme_numbers_neither_panic_nor_break_invariants(
        est in prop_oneof![Just(0u64), Just(u64::MAX), 0u64..10_000_000],
        price in prop_oneof![Just(0i64), Just(i64::MAX), 1i64..100_000_000_000],
        min_bid in prop_oneof![Just(None), Just(Some(i64::MAX)), (1i64..100_000_000_000).prop_map(Some)],
        storage in prop_oneof![Just(0i64), Just(i64::MAX), 0i64..1_000_000],
        dlperf in prop_oneof![Just(f64::NAN), Just(0.0), Just(1e-300), Just(1e300), 1.0f64..500.0],
        gpus in 0u32..9, num_gpus in 0u32..9, disk in prop_oneof![Just(0u32), Just(u32::MAX), 0u32..500],
        budget in prop_oneof![Just(None), Just(Some(0i64)), Just(Some(i64::MAX)), (0i64..1_000_000_000_000).prop_map(Some)],
        max_dph in prop_oneof![Just(None), Just(Some(0i64)), Just(Some(i64::MAX))],
        ckpt in prop_oneof![Just(0u32), Just(u32::MAX), 1u32..10_000],
        preempt in prop_oneof![Just(f64::NAN), Just(-1.0), Just(1e12), 0.0f64..2.0],
    ) {
        let mut o = offer(1, "g", num_gpus, 0, dlperf);
        o.dph_base = price;
        o.min_bid = min_bid;
        o.storage_gb_h = storage;
        o.disk_space_gb = u32::MAX;
        o.preempt_per_h = preempt;
        o.boot_estimate_s = u32::MAX;
        let mut jobs = Vec::new();
        for (id, policy) in [(1, InterruptiblePolicy::Always), (2, InterruptiblePolicy::Never)] {
            let mut j = job(id, 0);
            j.est_runtime_s = est;
            j.gpus = gpus;
            j.disk_gb = disk;
            j.max_dph = max_dph;
            j.interruptible = policy;
            j.checkpoints = true;
            j.checkpoint_interval_s = ckpt;
            jobs.push(j);
        }
        let mut o2 = o.clone();
        o2.id = 2;
        o2.machine_id = 20;
        let mut inp = input(jobs, vec![o, o2]);
        if let Some(b) = budget {
            inp.budgets.insert("exp".into(), b);
        }
        inp.idle.push(IdleInstance {
            id: 5, machine_id: 50, host_id: 500, image: "img".into(), gpu_name: "g".into(),
            num_gpus, free_gpus: num_gpus, disk_free_gb: disk, dph: price, dlperf,
            interruptible: true, preempt_per_h: preempt, classes: vec!["c".into()],
            busy_until_ms: 0,
        });
        let p = plan(&inp);
        check_plan(&inp, &p)?;
        let _ = naive_baseline(&inp);
        let _ = lower_bound(&inp);
    }

    #[test]
    fn the_baseline_keeps_the_basic_invariants(seed in any::<u64>(), n in 1usize..80) {
        let mut inp = market(seed, small_shape(n));
        inp.budgets.clear();
        inp.blacklist = Blacklist::default();
        inp.config.min_reliability = 0.0;
        let b = naive_baseline(&inp);
        let mut seen = BTreeSet::new();
        for id in b.placed_job_ids().into_iter().chain(b.deferred.iter().map(|d| d.job_id)) {
            prop_assert!(seen.insert(id));
        }
        prop_assert_eq!(seen.len(), inp.jobs.len());
        let offers: BTreeSet<i64> = b.rent.iter().map(|r| r.offer_id).collect();
        prop_assert_eq!(offers.len(), b.rent.len());
        prop_assert!(b.rent.iter().all(|r| r.jobs.len() == 1));
        prop_assert!(b.reuse.is_empty());
        let lb = lower_bound(&inp);
        let placed: BTreeSet<i64> = b.placed_job_ids().into_iter().collect();
        let lb_placed = saturating_sum(lb.per_job.iter().filter(|(id, _)| placed.contains(id)).map(|(_, c)| *c));
        prop_assert!(b.expected_cost() >= lb_placed);
    }

    #[test]
    fn packs_exactly_when_the_gpu_hour_is_cheaper(n in 2u32..9, single_cents in 5i64..300, multi_cents in 5i64..2400) {
        // n single-GPU offers and one n-GPU offer, same speed per GPU, n equal jobs.
        let mut offers: Vec<_> = (1..=i64::from(n)).map(|i| offer(i, "g", 1, single_cents, 30.0)).collect();
        offers.push(offer(100, "g", n, multi_cents, 30.0 * f64::from(n)));
        let jobs = (1..=i64::from(n)).map(|i| job(i, 4)).collect();
        let p = plan(&input(jobs, offers));
        prop_assert!(p.deferred.is_empty());
        let per_gpu_multi = multi_cents;
        let per_gpu_single = single_cents * i64::from(n);
        if per_gpu_multi < per_gpu_single {
            prop_assert_eq!(rented_offers(&p), vec![100]);
            prop_assert_eq!(p.rent[0].jobs.len(), n as usize);
        }
        if per_gpu_multi > per_gpu_single {
            prop_assert_eq!(p.rent.len(), n as usize);
            prop_assert!(p.rent.iter().all(|r| r.num_gpus == 1));
        }
    }

    #[test]
    fn a_faster_offer_wins_exactly_when_it_is_cheaper_per_job(
        slow_cents in 10i64..200, fast_cents in 10i64..600, speedup in 1u32..5, hours in 1u64..48,
    ) {
        let mut inp = input(
            vec![job(1, hours)],
            vec![offer(1, "slow", 1, slow_cents, 30.0), offer(2, "fast", 1, fast_cents, 30.0 * f64::from(speedup))],
        );
        inp.offers[0].boot_estimate_s = 1;
        inp.offers[1].boot_estimate_s = 1;
        let p = plan(&inp);
        let slow = slow_cents * i64::from(speedup);
        let fast = fast_cents;
        let chosen = p.rent[0].offer_id;
        if slow < fast { prop_assert_eq!(chosen, 1); }
        if fast < slow { prop_assert_eq!(chosen, 2); }
    }
}

// ---- pacing ----------------------------------------------------------------------------------

/// Ten one-hour jobs; one cheap offer ($0.30/h) and one dear one ($0.60/h), same speed.
fn paced_input(deadline_h: i64) -> PlanInput {
    let jobs = (1..=10).map(|i| job(i, 1)).collect();
    let mut inp = input(
        jobs,
        vec![offer(1, "g", 1, 30, 30.0), offer(2, "g", 1, 60, 30.0)],
    );
    inp.pace = Some(Pace {
        deadline_ms: inp.now_ms + deadline_h * 3_600_000,
        held: Vec::new(),
    });
    inp
}

#[test]
fn pacing_with_time_to_spare_rents_only_the_cheap_capacity() {
    // 10 GPU-hours of work, 48 hours: the cheap GPU alone is enough.
    let inp = paced_input(48);
    let p = plan(&inp);
    assert_eq!(rented_offers(&p), vec![1]);
    assert_eq!(p.deferred.len(), 9);
    assert!(
        p.deferred
            .iter()
            .any(|d| matches!(d.reason, DeferReason::Paced { .. })),
        "{:?}",
        p.deferred
    );
    // The cheapest turned-down rate is the dear offer's, $0.60 per reference GPU-hour.
    let paced = p
        .deferred
        .iter()
        .find_map(|d| match d.reason {
            DeferReason::Paced { cheapest, .. } => Some(cheapest),
            _ => None,
        })
        .expect("a paced deferral");
    assert_eq!(paced, 60 * D / 100);
}

#[test]
fn pacing_rents_dearer_capacity_when_the_deadline_needs_it() {
    // 10 GPU-hours in 3 hours: one GPU cannot do it, so the dear one is rented too.
    let p = plan(&paced_input(3));
    assert_eq!(rented_offers(&p), vec![1, 2]);
    // Without a deadline both are rented as well (every job goes somewhere at once).
    let mut inp = paced_input(3);
    inp.pace = None;
    assert_eq!(rented_offers(&plan(&inp)), vec![1, 2]);
}

#[test]
fn pacing_counts_capacity_we_already_hold() {
    // We hold a cheap GPU that is busy for another hour: the queue waits for it instead of
    // renting the dear offer, and nothing new is rented at all when the deadline allows.
    let mut inp = paced_input(48);
    inp.offers.remove(0);
    inp.offers_by_class.insert("c".into(), vec![0]);
    if let Some(pace) = &mut inp.pace {
        pace.held.push(held(1, 30, 30.0, 3600));
    }
    let p = plan(&inp);
    assert!(p.rent.is_empty(), "{:?}", p.rent);
    assert_eq!(p.deferred.len(), 10);
    // The same queue with a 2-hour deadline needs the dear GPU.
    if let Some(pace) = &mut inp.pace {
        pace.deadline_ms = inp.now_ms + 2 * 3_600_000;
    }
    assert_eq!(rented_offers(&plan(&inp)), vec![2]);
}

#[test]
fn pacing_keeps_the_cheapest_bid_machine_for_checkpointing_work() {
    // Machine A is the cheapest on demand ($0.70) and, far more so, at its bid ($0.25). B is
    // on demand only at $0.72; C bids at $0.40. One job must run on demand, one checkpoints.
    let mut a = offer(1, "g", 1, 70, 30.0);
    a.min_bid = Some(25 * D / 100);
    let b = offer(2, "g", 1, 72, 30.0);
    let mut c = offer(3, "g", 1, 100, 30.0);
    c.min_bid = Some(40 * D / 100);
    let mut ck = job(2, 10);
    ck.interruptible = InterruptiblePolicy::Auto;
    ck.checkpoints = true;
    let mut inp = input(vec![job(1, 10), ck], vec![a, b, c]);
    let on = |p: &Plan, job_id: i64| {
        p.rent
            .iter()
            .find(|r| r.jobs.iter().any(|j| j.job_id == job_id))
            .map(|r| (r.offer_id, r.kind))
    };
    // Unpaced, the on-demand job (the more constrained, so it chooses first) takes A for 2¢ an
    // hour less than B, and the checkpointing job pays 15¢ an hour more on C.
    let p = plan(&inp);
    assert_eq!(on(&p, 1), Some((1, RentalKind::OnDemand)));
    assert_eq!(on(&p, 2).map(|x| x.0), Some(3));
    // Paced, A gains the interruptible pool more (40¢ cutoff − 25¢) than the on-demand pool
    // (70¢ cutoff − 70¢): the on-demand job goes to B, the checkpointing job bids on A.
    inp.pace = Some(Pace {
        deadline_ms: inp.now_ms + 48 * 3_600_000,
        held: Vec::new(),
    });
    let p = plan(&inp);
    assert_eq!(on(&p, 1), Some((2, RentalKind::OnDemand)), "{p:?}");
    assert_eq!(
        on(&p, 2),
        Some((1, RentalKind::Interruptible { bid: 25 * D / 100 }))
    );
    // Nothing is kept for checkpointing work that its budget cannot start.
    let mut broke = inp.clone();
    broke.jobs[1].experiment = "broke".into();
    broke.budgets.insert("broke".into(), 1);
    let p = plan(&broke);
    assert_eq!(on(&p, 1), Some((1, RentalKind::OnDemand)), "{p:?}");
    assert_eq!(on(&p, 2), None);
    // Without B the on-demand job waits: C is over its cutoff, and A is kept.
    inp.offers.remove(1);
    inp.offers_by_class.insert("c".into(), vec![0, 1]);
    let p = plan(&inp);
    assert_eq!(on(&p, 1), None);
    assert!(
        matches!(p.deferred[0].reason, DeferReason::Paced { .. }),
        "{p:?}"
    );
    // Unless it is urgent (it must start now to finish in time): then it may take A, charged
    // what the checkpointing work gains there (42¢ cutoff with slack − 25¢): 87¢ against C's $1.
    if let Some(pace) = &mut inp.pace {
        pace.deadline_ms = inp.now_ms + 10 * 3_600_000 + 300_000;
    }
    let p = plan(&inp);
    assert_eq!(on(&p, 1), Some((1, RentalKind::OnDemand)), "{p:?}");
    // With C at 80¢ the urgent job takes C, and A stays for the checkpointing job.
    inp.offers[1].dph_base = 80 * D / 100;
    let p = plan(&inp);
    assert_eq!(on(&p, 1), Some((3, RentalKind::OnDemand)), "{p:?}");
    assert_eq!(on(&p, 2).map(|x| x.0), Some(1));
}

/// Offers on machine 77, one per split size, at `cents_per_gpu` each GPU.
fn splits_of_77(sizes: &[u32], first_id: i64, cents_per_gpu: i64) -> Vec<PlanOffer> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let id = first_id + i as i64;
            let mut o = offer(
                id,
                "g",
                n,
                cents_per_gpu * i64::from(n),
                30.0 * f64::from(n),
            );
            o.machine_id = 77;
            o
        })
        .collect()
}

fn gpus_on_77(p: &Plan, offers: &[PlanOffer]) -> u32 {
    p.rent
        .iter()
        .filter(|r| r.machine_id == 77)
        .map(|r| offers.iter().find(|o| o.id == r.offer_id).unwrap().num_gpus)
        .sum()
}

/// Machine 77 with four GPUs free (its 4, 2 and 1-GPU splits at 30¢ a GPU) and an 8-GPU split
/// at 20¢ a GPU that is rented (others' bids hold four GPUs), and offer 9 elsewhere at 90¢.
fn half_free_77() -> Vec<PlanOffer> {
    let mut offers = splits_of_77(&[4, 2, 1], 1, 30);
    let mut eight = offer(4, "g", 8, 8 * 20, 240.0);
    eight.machine_id = 77;
    eight.rented = true;
    offers.push(eight);
    offers.push(offer(9, "g", 1, 90, 30.0));
    offers
}

#[test]
fn the_splits_of_a_machine_share_its_gpus() {
    // Vast lists an 8-GPU machine as 8, 4, 2 and 1-GPU offers: views of the same GPUs.
    let mut offers = splits_of_77(&[8, 4, 2, 1], 1, 30);
    offers.push(offer(9, "g", 1, 90, 30.0));
    let jobs = (1..=12).map(|i| job(i, 1)).collect();
    let p = plan(&input(jobs, offers.clone()));
    assert!(gpus_on_77(&p, &offers) <= 8, "{:?}", p.rent);
    let mut ids = rented_offers(&p);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        p.rent.len(),
        "an offer rented twice: {:?}",
        p.rent
    );
}

#[test]
fn the_free_gpus_left_on_a_machine_are_rented_too() {
    // Three 1-GPU jobs with different images cannot share an instance: the cheap machine takes
    // two of them (1 GPU, then the 2-GPU split, at 60¢ < 90¢), and neither the 8-GPU split nor
    // more GPUs than are free.
    let offers = half_free_77();
    let jobs = (1..=3)
        .map(|i| {
            let mut j = job(i, 1);
            j.image = format!("img{i}");
            j
        })
        .collect();
    let p = plan(&input(jobs, offers.clone()));
    let on_77: Vec<i64> = p
        .rent
        .iter()
        .filter(|r| r.machine_id == 77)
        .map(|r| r.offer_id)
        .collect();
    assert!(on_77.len() >= 2, "{:?}", p.rent);
    assert!(gpus_on_77(&p, &offers) <= 4, "{:?}", p.rent);
    assert_eq!(p.rent.len(), 3, "{:?}", p.rent);
}

#[test]
fn after_taking_a_rented_split_nothing_else_goes_on_its_machine() {
    // The rented 8-GPU split of machine 77 is the cheapest for an 8-GPU job: the job takes it,
    // outbidding the others, and uses every GPU. The 1-GPU job then goes elsewhere although
    // machine 77 still lists cheap 1-GPU splits.
    let mut offers = half_free_77();
    offers.push(offer(10, "g", 8, 8 * 50, 240.0));
    let mut big = job(1, 1);
    big.gpus = 8;
    big.image = "a".into();
    let mut small = job(2, 1);
    small.image = "b".into();
    let p = plan(&input(vec![big, small], offers));
    let mut got = rented_offers(&p);
    got.sort_unstable();
    assert_eq!(got, vec![4, 9], "{:?}", p.rent);
}

#[test]
fn a_multi_gpu_rental_has_disk_for_a_job_on_every_gpu() {
    // A 4-GPU job on a 4-GPU offer: room for four 1-GPU jobs later, not just the one.
    let mut j = job(1, 1);
    j.gpus = 4;
    let p = plan(&input(vec![j], vec![offer(1, "g", 4, 120, 120.0)]));
    assert_eq!(p.rent.len(), 1);
    assert_eq!(p.rent[0].disk_gb, 40);
}

#[test]
fn in_the_tail_of_a_paced_queue_a_long_job_does_not_keep_a_big_instance_alive() {
    // Our 4-GPU instance is empty; the one job left is 10 hours on one GPU. Keeping the whole
    // instance for it costs four times a fresh 1-GPU rental of the same rate.
    let big = idle(5, 4, 120, 120.0);
    let mut inp = input(vec![job(1, 10)], vec![offer(1, "g", 1, 30, 30.0)]);
    inp.idle.push(big.clone());
    let unpaced = plan(&inp);
    assert_eq!(
        unpaced.reuse.len(),
        1,
        "without pacing the warm instance is reused"
    );
    inp.pace = Some(Pace {
        deadline_ms: inp.now_ms + 48 * 3_600_000,
        held: vec![held(4, 120, 120.0, 0)],
    });
    let p = plan(&inp);
    assert!(p.reuse.is_empty(), "{:?}", p.reuse);
    assert_eq!(rented_offers(&p), vec![1]);
    // A job that ends before the instance's current work does rides along for free.
    inp.idle[0].busy_until_ms = inp.now_ms + 20 * 3_600_000;
    inp.idle[0].free_gpus = 3;
    let p = plan(&inp);
    assert_eq!(p.reuse.len(), 1, "{:?}", p.rent);
}

#[test]
fn an_urgent_job_takes_the_cheapest_offer_that_finishes_in_time() {
    // One 11-hour job and ten 1-hour ones, due in 12 hours. Four cheap half-speed GPUs
    // ($0.30 per reference hour) cover the capacity the queue needs, so the cutoff sits there;
    // but on one of them the long job takes 22 hours. It must start now on the full-speed GPU
    // above the cutoff ($0.45), not on a cheap slow one (late) nor on the dear, slow one
    // ($1.20, 33 hours) that used to escape the cutoff because it was late anyway.
    let mut jobs = vec![job(1, 11)];
    jobs.extend((2..=11).map(|i| job(i, 1)));
    let mut offers: Vec<PlanOffer> = (1..=4).map(|i| offer(i, "half", 1, 15, 15.0)).collect();
    offers.push(offer(5, "full", 1, 45, 30.0));
    offers.push(offer(6, "third", 1, 40, 10.0));
    let mut inp = input(jobs, offers);
    let due_in = |inp: &mut PlanInput, hours: i64| {
        inp.pace = Some(Pace {
            deadline_ms: inp.now_ms + hours * 3_600_000,
            held: Vec::new(),
        });
    };
    let offer_of = |p: &Plan, job: i64| {
        p.rent
            .iter()
            .find(|r| r.jobs.iter().any(|j| j.job_id == job))
            .map(|r| r.offer_id)
    };
    due_in(&mut inp, 12);
    let p = plan(&inp);
    assert_eq!(offer_of(&p, 1), Some(5), "{:?}", p.rent);
    assert!(!rented_offers(&p).contains(&6), "{:?}", p.rent);
    // The short jobs are not urgent: they stay on the cheap GPUs.
    assert!(
        (2..=11).all(|j| offer_of(&p, j).is_none_or(|o| o <= 4)),
        "{:?}",
        p.rent
    );
    // Due in 48 hours the long job is not urgent: 22 hours on a cheap GPU is in time.
    due_in(&mut inp, 48);
    let p = plan(&inp);
    assert!(offer_of(&p, 1).is_some_and(|o| o <= 4), "{:?}", p.rent);
}

#[test]
fn the_most_constrained_job_picks_first() {
    // Two four-GPU machines: A is the cheapest on demand ($2.00/h) and at a bid ($0.80); B is
    // dearer on demand ($3.00/h) and a little dearer at a bid ($0.90). A long checkpointing job
    // would take A's bid if it went first (longest first), leaving the on-demand job B. The
    // on-demand job goes first instead: it gets A, the checkpointing job B's bid.
    let mut a = offer(1, "g", 4, 200, 120.0);
    a.min_bid = Some(80 * D / 100);
    let mut b = offer(2, "g", 4, 300, 120.0);
    b.min_bid = Some(90 * D / 100);
    let mut ckpt = job(1, 10);
    ckpt.gpus = 4;
    ckpt.interruptible = InterruptiblePolicy::Auto;
    ckpt.checkpoints = true;
    let mut on_demand = job(2, 2);
    on_demand.gpus = 4;
    let p = plan(&input(vec![ckpt, on_demand], vec![a, b]));
    let offer_of = |job: i64| {
        p.rent
            .iter()
            .find(|r| r.jobs.iter().any(|j| j.job_id == job))
            .map(|r| (r.offer_id, matches!(r.kind, RentalKind::OnDemand)))
    };
    assert_eq!(offer_of(2), Some((1, true)), "{:?}", p.rent);
    assert_eq!(offer_of(1), Some((2, false)), "{:?}", p.rent);
    // A job of more GPUs goes before a longer job of fewer: the one-GPU job would otherwise take
    // a slot of the only two-GPU machine (the cheapest per GPU) and leave the two-GPU job none.
    let mut two = job(3, 1);
    two.gpus = 2;
    let p = plan(&input(
        vec![job(4, 10), two],
        vec![offer(3, "g", 2, 40, 60.0), offer(4, "g", 1, 30, 30.0)],
    ));
    let offer_of = |job: i64| {
        p.rent
            .iter()
            .find(|r| r.jobs.iter().any(|j| j.job_id == job))
            .map(|r| r.offer_id)
    };
    assert_eq!(offer_of(3), Some(3), "{:?}", p.rent);
    assert_eq!(offer_of(4), Some(4), "{:?}", p.rent);
}
