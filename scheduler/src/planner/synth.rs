//! Deterministic synthetic markets for the planner benchmark and property tests.
//!
//! A seed gives the same [`PlanInput`] on every platform and every version of this crate's
//! dependencies (the generator is our own splitmix64, not `rand`, whose algorithms may change).
//! Prices and speeds follow the shape of the real Vast market: a few GPU models, 1–8 GPUs per
//! offer, `min_bid` around half the on-demand price, some offers not biddable.

use std::collections::BTreeMap;

use super::types::*;

/// splitmix64: tiny, fast, and fully specified.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.range(0, 100) < pct
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

/// (name, dlperf per GPU, typical on-demand $/GPU-hour in micro-dollars)
const MODELS: [(&str, f64, i64); 6] = [
    ("RTX 3090", 20.0, 200_000),
    ("RTX 4090", 35.0, 350_000),
    ("RTX A6000", 25.0, 450_000),
    ("L40S", 45.0, 800_000),
    ("A100 SXM4", 60.0, 1_000_000),
    ("H100 SXM", 110.0, 2_200_000),
];

/// The size of a synthetic market.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub jobs: usize,
    pub offers: usize,
    pub classes: usize,
    pub experiments: usize,
    pub idle: usize,
}

/// A market of the given shape. Every class accepts a subset of GPU models (as a `gpu_name in
/// [...]` query would), all jobs of a class share its GPU count, disk and image.
pub fn market(seed: u64, shape: Shape) -> PlanInput {
    let mut r = SplitMix64::new(seed);
    let now_ms: i64 = 1_800_000_000_000;
    let offers: Vec<PlanOffer> = (0..shape.offers)
        .map(|i| {
            let (name, perf, usd_per_gpu) = *r.pick(&MODELS);
            let num_gpus = *r.pick(&[1u32, 1, 1, 2, 2, 4, 4, 8]);
            let micro = usd_per_gpu * i64::from(num_gpus) * r.range(70, 150) as i64 / 100;
            let dph_base = micro * 1000;
            let min_bid = (!r.chance(20)).then(|| dph_base * r.range(30, 75) as i64 / 100);
            let machine_id = 100_000 + i as i64 / 2;
            PlanOffer {
                id: 1_000_000 + i as i64,
                machine_id,
                host_id: machine_id / 4,
                gpu_name: name.to_string(),
                num_gpus,
                dph_base,
                storage_gb_h: r.range(100_000, 400_000) as i64,
                disk_space_gb: r.range(50, 2000) as u32,
                min_bid,
                dlperf: perf * f64::from(num_gpus) * r.range(85, 115) as f64 / 100.0,
                reliability: r.range(850, 1000) as f64 / 1000.0,
                boot_estimate_s: r.range(60, 600) as u32,
                preempt_per_h: r.range(5, 300) as f64 / 1000.0,
                rented: false,
            }
        })
        .collect();

    struct Class {
        key: String,
        gpus: u32,
        disk_gb: u32,
        image: String,
        models: Vec<usize>,
    }
    let classes: Vec<Class> = (0..shape.classes.max(1))
        .map(|c| {
            let mut models: Vec<usize> = (0..MODELS.len()).filter(|_| r.chance(55)).collect();
            if models.is_empty() {
                models.push(r.range(0, MODELS.len() as u64) as usize);
            }
            let gpus = *r.pick(&[1u32, 1, 1, 1, 2, 4]);
            Class {
                key: format!("class-{c}"),
                gpus,
                disk_gb: r.range(10, 120) as u32,
                image: format!("registry.example/img-{}:latest", c % 7),
                models,
            }
        })
        .collect();
    let mut offers_by_class: BTreeMap<ClassKey, Vec<usize>> = BTreeMap::new();
    for c in &classes {
        let list = offers
            .iter()
            .enumerate()
            .filter(|(_, o)| c.models.iter().any(|&m| MODELS[m].0 == o.gpu_name))
            .map(|(i, _)| i)
            .collect();
        offers_by_class.insert(c.key.clone(), list);
    }

    let jobs: Vec<PlanJob> = (0..shape.jobs)
        .map(|i| {
            let c = r.pick(&classes);
            let checkpoints = r.chance(60);
            PlanJob {
                id: 1 + i as i64,
                experiment: format!("exp-{}", r.range(0, shape.experiments.max(1) as u64)),
                class: c.key.clone(),
                image: c.image.clone(),
                gpus: c.gpus,
                disk_gb: c.disk_gb,
                max_dph: r
                    .chance(30)
                    .then(|| r.range(200, 3000) as i64 * 1_000_000 * i64::from(c.gpus)),
                interruptible: *r.pick(&[
                    InterruptiblePolicy::Auto,
                    InterruptiblePolicy::Auto,
                    InterruptiblePolicy::Never,
                    InterruptiblePolicy::Always,
                ]),
                checkpoints,
                checkpoint_interval_s: if checkpoints {
                    r.range(0, 3600) as u32
                } else {
                    0
                },
                est_runtime_s: r.range(600, 36_000),
                max_runtime_s: r.chance(20).then(|| r.range(36_000, 72_000)),
                priority: r.range(0, 3) as i32,
                attempts_so_far: r.range(0, 2) as u32,
            }
        })
        .collect();

    let idle = (0..shape.idle)
        .map(|i| {
            let c = r.pick(&classes);
            let model = MODELS[*r.pick(&c.models)];
            let num_gpus = c.gpus * *r.pick(&[1u32, 2]);
            IdleInstance {
                id: 9_000_000 + i as i64,
                machine_id: 900_000 + i as i64,
                host_id: 90_000 + i as i64,
                image: c.image.clone(),
                gpu_name: model.0.to_string(),
                num_gpus,
                free_gpus: num_gpus,
                disk_free_gb: c.disk_gb * 2,
                dph: model.2 * 1000 * i64::from(num_gpus),
                dlperf: model.1 * f64::from(num_gpus),
                interruptible: r.chance(20),
                preempt_per_h: 0.05,
                classes: vec![c.key.clone()],
                busy_until_ms: 0,
            }
        })
        .collect();

    let mut budgets = BTreeMap::new();
    for e in 0..shape.experiments.max(1) {
        if r.chance(70) {
            budgets.insert(
                format!("exp-{e}"),
                r.range(50, 5000) as i64 * NANO_PER_DOLLAR,
            );
        }
    }
    let mut throughput = Throughput::default();
    for (name, _, _) in MODELS.iter().take(3) {
        throughput.by_gpu.insert(
            name.to_string(),
            Measured {
                ref_work_s: r.range(3600, 36_000),
                wall_s: r.range(3600, 36_000),
            },
        );
    }
    let mut blacklist = Blacklist::default();
    for _ in 0..shape.offers / 200 {
        let m = 100_000 + r.range(0, (shape.offers as u64 / 2).max(1)) as i64;
        blacklist.machines.insert(
            m,
            Ban {
                until_ms: now_ms + 3_600_000,
                reason: "synthetic".into(),
            },
        );
    }

    PlanInput {
        now_ms,
        jobs,
        offers,
        offers_by_class,
        idle,
        throughput,
        budgets,
        blacklist,
        config: PlanConfig {
            max_instances: shape.offers as u32,
            ..PlanConfig::default()
        },
        pace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_market_and_different_seed_differs() {
        let shape = Shape {
            jobs: 50,
            offers: 80,
            classes: 4,
            experiments: 3,
            idle: 3,
        };
        assert_eq!(market(7, shape), market(7, shape));
        assert_ne!(market(7, shape), market(8, shape));
        let mut r = SplitMix64::new(0);
        // Known first output of splitmix64 with seed 0.
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    }
}
