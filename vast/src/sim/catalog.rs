//! The seeded host catalogue: real GPU models with realistic specs and prices, spread over
//! machines of 1 to 8 GPUs in many countries.
//!
//! Figures are typical of Vast listings (gpu_ram in MB as Vast reports it, compute capability
//! × 100, fp32 TFLOPS, DLPerf roughly as Vast scores it, on-demand $/GPU-hour ranges), so
//! planners see the same trade-offs they would see on the real market: a 4090 is often cheaper
//! per unit of work than a 3090, H100s cost ten times a 3090 per hour, and so on.

use rust_decimal::Decimal;

use super::rng::SimRng;

/// One GPU model.
#[derive(Debug, Clone, Copy)]
pub struct GpuModel {
    pub name: &'static str,
    pub ram_mb: u64,
    pub compute_cap: u32,
    pub tflops: f64,
    pub dlperf: f64,
    pub mem_bw: f64,
    pub max_power: f64,
    /// On-demand $/GPU-hour range.
    pub price: (f64, f64),
    /// Relative share of machines.
    pub weight: f64,
    /// Probability that a machine with this GPU is in a datacenter.
    pub datacenter: f64,
    /// Weights of 1, 2, 4 and 8 GPUs per machine.
    pub counts: [f64; 4],
    /// Oldest driver the model runs with (index into [`DRIVERS`]).
    pub min_driver: usize,
    pub nvlink: f64,
}

pub const GPU_MODELS: &[GpuModel] = &[
    GpuModel {
        name: "RTX 3090",
        ram_mb: 24576,
        compute_cap: 860,
        tflops: 35.6,
        dlperf: 21.0,
        mem_bw: 936.0,
        max_power: 350.0,
        price: (0.13, 0.26),
        weight: 16.0,
        datacenter: 0.05,
        counts: [4.0, 2.0, 2.0, 1.5],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "RTX 4090",
        ram_mb: 24564,
        compute_cap: 890,
        tflops: 82.6,
        dlperf: 40.0,
        mem_bw: 1008.0,
        max_power: 450.0,
        price: (0.27, 0.55),
        weight: 20.0,
        datacenter: 0.1,
        counts: [4.0, 2.0, 2.0, 2.0],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "RTX 5090",
        ram_mb: 32607,
        compute_cap: 1200,
        tflops: 104.8,
        dlperf: 58.0,
        mem_bw: 1792.0,
        max_power: 575.0,
        price: (0.55, 0.95),
        weight: 8.0,
        datacenter: 0.1,
        counts: [4.0, 2.0, 1.5, 1.0],
        min_driver: 3,
        nvlink: 0.0,
    },
    GpuModel {
        name: "RTX A4000",
        ram_mb: 16376,
        compute_cap: 860,
        tflops: 19.2,
        dlperf: 11.0,
        mem_bw: 448.0,
        max_power: 140.0,
        price: (0.08, 0.17),
        weight: 6.0,
        datacenter: 0.2,
        counts: [3.0, 2.0, 2.0, 1.0],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "RTX A5000",
        ram_mb: 24564,
        compute_cap: 860,
        tflops: 27.8,
        dlperf: 16.0,
        mem_bw: 768.0,
        max_power: 230.0,
        price: (0.15, 0.30),
        weight: 7.0,
        datacenter: 0.3,
        counts: [3.0, 2.0, 2.0, 1.5],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "RTX A6000",
        ram_mb: 49140,
        compute_cap: 860,
        tflops: 38.7,
        dlperf: 23.0,
        mem_bw: 768.0,
        max_power: 300.0,
        price: (0.35, 0.62),
        weight: 7.0,
        datacenter: 0.4,
        counts: [3.0, 2.0, 2.0, 2.0],
        min_driver: 0,
        nvlink: 56.0,
    },
    GpuModel {
        name: "L4",
        ram_mb: 23034,
        compute_cap: 890,
        tflops: 30.3,
        dlperf: 17.0,
        mem_bw: 300.0,
        max_power: 72.0,
        price: (0.18, 0.36),
        weight: 4.0,
        datacenter: 0.8,
        counts: [2.0, 2.0, 2.0, 2.0],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "L40S",
        ram_mb: 46068,
        compute_cap: 890,
        tflops: 91.6,
        dlperf: 48.0,
        mem_bw: 864.0,
        max_power: 350.0,
        price: (0.55, 1.05),
        weight: 5.0,
        datacenter: 0.8,
        counts: [2.0, 2.0, 2.0, 3.0],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "A100 PCIE",
        ram_mb: 81920,
        compute_cap: 800,
        tflops: 19.5,
        dlperf: 60.0,
        mem_bw: 1935.0,
        max_power: 300.0,
        price: (0.65, 1.30),
        weight: 5.0,
        datacenter: 0.8,
        counts: [3.0, 2.0, 2.0, 2.0],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "A100 SXM4",
        ram_mb: 81920,
        compute_cap: 800,
        tflops: 19.5,
        dlperf: 66.0,
        mem_bw: 2039.0,
        max_power: 400.0,
        price: (0.80, 1.50),
        weight: 5.0,
        datacenter: 0.95,
        counts: [1.0, 1.0, 2.0, 5.0],
        min_driver: 0,
        nvlink: 600.0,
    },
    GpuModel {
        name: "H100 PCIE",
        ram_mb: 81559,
        compute_cap: 900,
        tflops: 51.2,
        dlperf: 95.0,
        mem_bw: 2039.0,
        max_power: 350.0,
        price: (1.50, 2.30),
        weight: 4.0,
        datacenter: 0.9,
        counts: [2.0, 2.0, 2.0, 2.0],
        min_driver: 0,
        nvlink: 0.0,
    },
    GpuModel {
        name: "H100 SXM",
        ram_mb: 81559,
        compute_cap: 900,
        tflops: 66.9,
        dlperf: 110.0,
        mem_bw: 3350.0,
        max_power: 700.0,
        price: (1.70, 2.80),
        weight: 5.0,
        datacenter: 0.95,
        counts: [1.0, 1.0, 2.0, 6.0],
        min_driver: 0,
        nvlink: 900.0,
    },
    GpuModel {
        name: "H200",
        ram_mb: 143771,
        compute_cap: 900,
        tflops: 66.9,
        dlperf: 125.0,
        mem_bw: 4800.0,
        max_power: 700.0,
        price: (2.40, 3.80),
        weight: 3.0,
        datacenter: 1.0,
        counts: [1.0, 1.0, 2.0, 6.0],
        min_driver: 1,
        nvlink: 900.0,
    },
];

/// (driver version, cuda_max_good), oldest first.
pub const DRIVERS: &[(&str, f64)] = &[
    ("535.183.01", 12.2),
    ("550.127.05", 12.4),
    ("560.35.03", 12.6),
    ("570.133.07", 12.8),
    ("575.57.08", 12.9),
    ("580.65.06", 13.0),
];

const PLACES: &[(&str, f64)] = &[
    ("Texas, US", 6.0),
    ("California, US", 5.0),
    ("Virginia, US", 3.0),
    ("Oregon, US", 2.0),
    ("Quebec, CA", 3.0),
    ("Ontario, CA", 1.5),
    ("Bavaria, DE", 2.0),
    ("Hesse, DE", 2.0),
    ("North Holland, NL", 2.0),
    ("England, GB", 2.0),
    ("Ile-de-France, FR", 1.5),
    ("Stockholm, SE", 1.5),
    ("Uusimaa, FI", 1.0),
    ("Oslo, NO", 1.0),
    ("Masovia, PL", 1.5),
    ("Prague, CZ", 1.0),
    ("Madrid, ES", 1.0),
    ("Taipei, TW", 2.0),
    ("Tokyo, JP", 1.5),
    ("Seoul, KR", 1.5),
    ("Hanoi, VN", 1.5),
    ("Guangdong, CN", 1.5),
    ("Sao Paulo, BR", 1.0),
    ("New South Wales, AU", 1.0),
    ("Maharashtra, IN", 1.0),
];

const CPUS: &[(&str, u32, f64)] = &[
    ("AMD Ryzen 9 5950X 16-Core Processor", 32, 3.4),
    ("AMD Ryzen 9 7950X 16-Core Processor", 32, 4.5),
    ("Intel Core i9-13900K", 32, 3.0),
    ("AMD EPYC 7543 32-Core Processor", 64, 2.8),
    ("AMD EPYC 7763 64-Core Processor", 128, 2.45),
    ("AMD EPYC 9654 96-Core Processor", 192, 2.4),
    ("Intel Xeon Gold 6338 CPU @ 2.00GHz", 64, 2.0),
    ("Intel Xeon Platinum 8480+", 112, 2.0),
];

const MOBOS: &[&str] = &[
    "ROMED8-2T",
    "X570 AORUS ELITE",
    "PRO WS WRX80E-SAGE SE WIFI",
    "H12SSL-i",
    "Z790 AORUS ELITE AX",
    "MZ73-LM0-000",
];
const DISKS: &[&str] = &[
    "Samsung SSD 980 PRO 2TB",
    "WD_BLACK SN850X 4000GB",
    "SAMSUNG MZQL23T8HCLS-00A07",
    "KIOXIA KCD8XPUG7T68",
    "Micron_7450_MTFDKCC3T8TFR",
];

/// A host machine and everything its offers are made of.
#[derive(Debug, Clone)]
pub struct Machine {
    pub machine_id: u64,
    pub host_id: u64,
    pub gpu: GpuModel,
    pub num_gpus: u32,
    pub cpu_name: &'static str,
    pub cpu_cores: u32,
    pub cpu_ghz: f64,
    pub cpu_ram_mb: u64,
    pub disk_space_gb: f64,
    pub disk_bw: f64,
    pub disk_name: &'static str,
    pub mobo_name: &'static str,
    pub inet_up: f64,
    pub inet_down: f64,
    /// $/GB.
    pub inet_up_cost: Decimal,
    pub inet_down_cost: Decimal,
    /// On-demand $/GPU-hour.
    pub dph_per_gpu: Decimal,
    /// Interruptible floor, $/GPU-hour.
    pub min_bid_per_gpu: Decimal,
    /// $/GB/month.
    pub storage_cost: Decimal,
    pub geolocation: &'static str,
    pub geolocode: u64,
    pub reliability: f64,
    pub verified: bool,
    pub hosting_type: u8,
    pub static_ip: bool,
    pub direct_port_count: u32,
    pub driver_version: &'static str,
    pub cuda_max_good: f64,
    pub pci_gen: f64,
    pub pcie_bw: f64,
    pub gpu_lanes: u32,
    pub public_ipaddr: String,
    /// Listing start and end, epoch seconds.
    pub start_date_s: i64,
    pub end_date_s: i64,
    pub has_avx: u8,
}

impl Machine {
    /// Bundle sizes this machine offers: 1, 2, 4, … up to its GPU count.
    pub fn bundle_sizes(&self) -> Vec<u32> {
        let mut v = Vec::new();
        let mut n = 1;
        while n <= self.num_gpus {
            v.push(n);
            n *= 2;
        }
        if v.last() != Some(&self.num_gpus) {
            v.push(self.num_gpus);
        }
        v
    }

    /// The two-letter country code at the end of the geolocation.
    pub fn country(&self) -> &str {
        country_code(self.geolocation)
    }
}

/// The two-letter country code at the end of a Vast geolocation ("Texas, US" → "US").
pub fn country_code(geo: &str) -> &str {
    let g = geo.trim();
    if g.len() >= 2 && g.is_char_boundary(g.len() - 2) {
        &g[g.len() - 2..]
    } else {
        g
    }
}

fn dec(v: f64, scale: u32) -> Decimal {
    let mut d = Decimal::from_f64_retain(v).unwrap_or_default();
    d = d.round_dp(scale);
    d.normalize()
}

/// Generates `count` machines deterministically from `seed`. Listing dates start at `start_s`.
pub fn generate(seed: u64, count: usize, start_s: i64) -> Vec<Machine> {
    let mut rng = SimRng::stream(seed, 0xCA7A_1060);
    let weights: Vec<f64> = GPU_MODELS.iter().map(|g| g.weight).collect();
    let place_w: Vec<f64> = PLACES.iter().map(|p| p.1).collect();
    let mut out = Vec::with_capacity(count);
    let mut host_id = 10_000 + rng.int(0, 5_000);
    for i in 0..count {
        let gpu = GPU_MODELS[rng.weighted(&weights)];
        let num_gpus = [1u32, 2, 4, 8][rng.weighted(&gpu.counts)];
        // Hosts often own a few machines.
        if i == 0 || rng.chance(0.6) {
            host_id += rng.int(1, 900);
        }
        let datacenter = rng.chance(gpu.datacenter);
        let (cpu_name, cores_base, cpu_ghz) = if datacenter || num_gpus >= 4 {
            *rng.pick(&CPUS[3..])
        } else {
            *rng.pick(&CPUS[..3])
        };
        let cpu_cores = cores_base.max(num_gpus * 4);
        let ram_gb_per_gpu = (gpu.ram_mb as f64 / 1024.0) * rng.range(1.0, 3.0);
        let cpu_ram_mb = ((ram_gb_per_gpu * num_gpus as f64).max(32.0) * 1024.0).round() as u64;
        let disk_space_gb = (rng.range(150.0, 900.0) * num_gpus as f64).round();
        let driver_idx = rng.int(gpu.min_driver as u64, (DRIVERS.len() - 1) as u64) as usize;
        let (driver_version, cuda_max_good) = DRIVERS[driver_idx];
        let price = rng.range(gpu.price.0, gpu.price.1);
        let dph_per_gpu = dec(price, 4);
        let min_bid_per_gpu = dec(price * rng.range(0.35, 0.7), 4);
        let storage_cost = dec(rng.range(0.05, 0.30), 6);
        let inet_up_cost = dec(rng.range(0.0, 0.02), 4);
        let inet_down_cost = dec(rng.range(0.0, 0.02), 4);
        let place = PLACES[rng.weighted(&place_w)].0;
        let geolocode = place
            .bytes()
            .fold(5381u64, |h, b| h.wrapping_mul(33) ^ b as u64)
            % 1_000_000_000;
        let inet_down = (rng.range(100.0, if datacenter { 10_000.0 } else { 2_000.0 })).round();
        let inet_up = (inet_down * rng.range(0.3, 1.0)).round();
        let reliability = if datacenter {
            rng.range(0.985, 0.9995)
        } else {
            1.0 - rng.exp(0.02).min(0.2)
        };
        let verified = datacenter || rng.chance(0.85);
        let pci_gen = if gpu.compute_cap >= 890 {
            *rng.pick(&[4.0, 5.0])
        } else {
            *rng.pick(&[3.0, 4.0])
        };
        let gpu_lanes = *rng.pick(&[8u32, 16]);
        let pcie_bw =
            ((pci_gen - 2.0) * 3.9 * gpu_lanes as f64 / 16.0 * rng.range(0.75, 0.98) * 10.0)
                .round()
                / 10.0;
        let days = rng.range(7.0, 180.0);
        out.push(Machine {
            machine_id: 1_000 + i as u64 * 7 + rng.int(0, 6),
            host_id,
            gpu,
            num_gpus,
            cpu_name,
            cpu_cores,
            cpu_ghz,
            cpu_ram_mb,
            disk_space_gb,
            disk_bw: (rng.range(1_000.0, 7_000.0)).round(),
            disk_name: rng.pick::<&str>(DISKS),
            mobo_name: rng.pick::<&str>(MOBOS),
            inet_up,
            inet_down,
            inet_up_cost,
            inet_down_cost,
            dph_per_gpu,
            min_bid_per_gpu,
            storage_cost,
            geolocation: place,
            geolocode,
            reliability: (reliability * 10_000.0).round() / 10_000.0,
            verified,
            hosting_type: u8::from(datacenter),
            static_ip: datacenter || rng.chance(0.5),
            direct_port_count: if rng.chance(0.8) {
                rng.int(10, 1000) as u32
            } else {
                0
            },
            driver_version,
            cuda_max_good,
            pci_gen,
            pcie_bw,
            gpu_lanes,
            public_ipaddr: format!(
                "{}.{}.{}.{}",
                rng.int(20, 220),
                rng.int(0, 255),
                rng.int(0, 255),
                rng.int(1, 254)
            ),
            start_date_s: start_s - rng.int(86_400, 86_400 * 60) as i64,
            end_date_s: start_s + (days * 86_400.0) as i64,
            has_avx: 1,
        });
    }
    out
}
