//! Sweeps: turning `--sweep` flags and sweep files into a list of parameter points.
//!
//! # `--sweep KEY=SPEC` (repeat for a Cartesian product)
//!
//! | SPEC | values |
//! |---|---|
//! | `0.1,0.01,adam` | the listed values, as written |
//! | `0..4` | integers, half-open: `0,1,2,3` |
//! | `0..=4` | integers, inclusive: `0,1,2,3,4` |
//! | `0..1:step:0.25` | `0,0.25,0.5,0.75` (half-open; `0..=1:step:0.25` adds `1`) |
//! | `1e-4..1e-1:log:4` | 4 log-spaced values, both ends included: `0.0001,0.001,0.01,0.1` |
//! | `0..1:lin:5` | 5 evenly spaced values, both ends included: `0,0.25,0.5,0.75,1` |
//!
//! A spec is a range only when it is `NUMBER..[=]NUMBER[:KIND:NUMBER]`; anything else with a
//! comma or no `..` is a list, so values such as `../data` stay literal. Keys are identifiers
//! (`[A-Za-z_][A-Za-z0-9_]*`). Computed numbers are printed with at most 12 significant digits.
//!
//! # Sweep files (`--sweep-file FILE`, TOML)
//!
//! ```toml
//! samples = 20          # optional; same as --sample (required when [random] is present)
//! seed = 7              # optional; same as --seed
//!
//! [fixed]               # the same for every job: substituted and exported, not in the name
//! epochs = 10
//!
//! [grid]                # Cartesian product; a value is a list or a SPEC string as above
//! lr = [0.1, 0.01]
//! seed = "0..3"
//!
//! [random]              # one draw per sample
//! wd = { log_uniform = [1e-5, 1e-1] }
//! dropout = { uniform = [0.0, 0.5] }
//! layers = { int = [2, 8] }          # inclusive
//! act = { choice = ["relu", "gelu"] }
//! ```
//!
//! Random search draws `--sample N` points with `--seed S` (default 0) from a self-contained
//! SplitMix64 generator, so the same file and seed give the same jobs on every machine and every
//! version; grid keys are drawn uniformly too. A pure grid with `--sample N` takes N distinct
//! grid points (all of them when N is at least the grid size), kept in grid order. Random
//! floats are printed with 6 significant digits.
//!
//! # Placeholders
//!
//! `{key}` in the command, in `--env` values and in `--checkpoint-dir` is replaced by the
//! value; `{{` and `}}` are literal braces; `${…}` is left alone for the shell. A `{name}` that is
//! no parameter is an error. Each parameter is also exported to the job's environment under its
//! own name (`lr=0.1` → `lr=0.1`).

use std::collections::{BTreeMap, HashSet};

/// At most this many points from one sweep.
pub const MAX_POINTS: usize = 1_000_000;

/// What was wrong with a sweep, naming the key and value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    #[error("invalid sweep {key}={value:?}: {why}")]
    BadSpec {
        key: String,
        value: String,
        why: String,
    },
    #[error("invalid sweep {arg:?}: expected KEY=VALUES (e.g. lr=0.1,0.01)")]
    MissingEquals { arg: String },
    #[error(
        "invalid sweep key {key:?}: keys are letters, digits and _ and do not start with a digit"
    )]
    BadKey { key: String },
    #[error("sweep key {key:?} is given twice")]
    DuplicateKey { key: String },
    #[error("sweep file {path}: {why}")]
    File { path: String, why: String },
    #[error("unknown placeholder {{{name}}} in {text:?} (known: {known})")]
    UnknownPlaceholder {
        name: String,
        text: String,
        known: String,
    },
    #[error("the sweep has {count} points, more than the limit of {max}", max = MAX_POINTS)]
    TooLarge { count: u128 },
    #[error(
        "the sweep has random parameters ({keys}); say how many points to draw with --sample N"
    )]
    NeedSample { keys: String },
    #[error("invalid --sample 0: draw at least one point")]
    ZeroSample,
}

/// A grid dimension: one key and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    pub key: String,
    pub values: Vec<String>,
}

/// A random-search distribution.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    Choice(Vec<String>),
    Uniform(f64, f64),
    LogUniform(f64, f64),
    /// Inclusive.
    Int(i64, i64),
}

/// A whole sweep: grid dimensions, random dimensions, fixed parameters, and sampling.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SweepSpec {
    pub grid: Vec<Dim>,
    pub random: Vec<(String, Dist)>,
    pub fixed: Vec<(String, String)>,
    pub sample: Option<usize>,
    pub seed: u64,
}

/// One job's parameters: the varying ones (in the name) and the fixed ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Point {
    pub params: Vec<(String, String)>,
    pub fixed: Vec<(String, String)>,
}

impl Point {
    /// A stable, readable name: `lr=0.1,seed=0`, or `job` when nothing varies.
    pub fn name(&self) -> String {
        if self.params.is_empty() {
            return "job".to_string();
        }
        self.params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every parameter, varying then fixed.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .iter()
            .chain(self.fixed.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.all().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

fn check_key(key: &str) -> Result<(), SweepError> {
    let mut chars = key.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SweepError::BadKey {
            key: key.to_string(),
        })
    }
}

/// Parses one `--sweep KEY=SPEC` flag.
pub fn parse_sweep_arg(arg: &str) -> Result<Dim, SweepError> {
    let (key, spec) = arg
        .split_once('=')
        .ok_or_else(|| SweepError::MissingEquals {
            arg: arg.to_string(),
        })?;
    let key = key.trim();
    check_key(key)?;
    Ok(Dim {
        key: key.to_string(),
        values: parse_values(key, spec)?,
    })
}

/// Parses a SPEC (list or range, see the module docs) for `key`.
pub fn parse_values(key: &str, spec: &str) -> Result<Vec<String>, SweepError> {
    let bad = |why: &str| SweepError::BadSpec {
        key: key.to_string(),
        value: spec.to_string(),
        why: why.to_string(),
    };
    let trimmed = spec.trim();
    if trimmed.is_empty() {
        return Err(bad("no values (write e.g. lr=0.1,0.01)"));
    }
    if !trimmed.contains(',') && looks_like_range(trimmed) {
        return parse_range(trimmed).map_err(|why| bad(&why));
    }
    let values: Vec<String> = trimmed.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(String::is_empty) {
        return Err(bad("empty value in the list"));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = values.iter().find(|v| !seen.insert(v.as_str())) {
        return Err(bad(&format!("value {dup:?} is listed twice")));
    }
    Ok(values)
}

/// `NUMBER..…`: starts like a number and has `..` after it.
fn looks_like_range(s: &str) -> bool {
    let Some(idx) = s.find("..") else {
        return false;
    };
    let start = &s[..idx];
    !start.is_empty() && start.trim().parse::<f64>().is_ok()
}

fn parse_num(s: &str, what: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what} {s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{what} {s:?} is not finite"))
    }
}

fn parse_int(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok()
}

fn parse_range(s: &str) -> Result<Vec<String>, String> {
    let (range, modifier) = match s.split_once(':') {
        Some((r, m)) => (r, Some(m)),
        None => (s, None),
    };
    let (start_s, rest) = range.split_once("..").ok_or("missing ..")?;
    let (inclusive, end_s) = match rest.strip_prefix('=') {
        Some(e) => (true, e),
        None => (false, rest),
    };
    if end_s.trim().is_empty() {
        return Err("range has no end (write e.g. 0..10 or 0..=9)".to_string());
    }
    match modifier {
        None => {
            let (Some(a), Some(b)) = (parse_int(start_s), parse_int(end_s)) else {
                parse_num(start_s, "start")?;
                parse_num(end_s, "end")?;
                return Err(
                    "a range without :step: or :log: needs integer ends; use A..B:step:S"
                        .to_string(),
                );
            };
            let end = if inclusive {
                b.checked_add(1).ok_or("end too large")?
            } else {
                b
            };
            if end <= a {
                return Err(format!("range {s} is empty"));
            }
            let count = (end as i128 - a as i128) as u128;
            if count > MAX_POINTS as u128 {
                return Err(format!("range has {count} values, more than {MAX_POINTS}"));
            }
            Ok((a..end).map(|v| v.to_string()).collect())
        }
        Some(m) => {
            let (kind, arg) = m.split_once(':').ok_or_else(|| {
                format!("expected :step:S, :log:N or :lin:N after the range, got :{m}")
            })?;
            let a = parse_num(start_s, "start")?;
            let b = parse_num(end_s, "end")?;
            match kind {
                "step" => {
                    let step = parse_num(arg, "step")?;
                    if step <= 0.0 {
                        return Err(format!("step {arg} must be positive"));
                    }
                    if b < a || (!inclusive && b == a) {
                        return Err(format!("range {start_s}..{end_s} is empty"));
                    }
                    let span = (b - a) / step;
                    if span > MAX_POINTS as f64 {
                        return Err(format!(
                            "range has about {span:.0} values, more than {MAX_POINTS}"
                        ));
                    }
                    // Count from the span, not by accumulating, so 0.1 steps do not drift.
                    let n = if inclusive {
                        (span + 1e-9).floor() as usize + 1
                    } else {
                        (span - 1e-9).ceil().max(0.0) as usize
                    };
                    let ints = parse_int(start_s).is_some() && parse_int(arg).is_some();
                    Ok((0..n)
                        .map(|i| {
                            let v = a + step * i as f64;
                            if ints {
                                format!("{}", v as i64)
                            } else {
                                fmt_num(v, 12)
                            }
                        })
                        .collect())
                }
                "log" | "lin" => {
                    let n: usize = arg
                        .trim()
                        .parse()
                        .map_err(|_| format!("count {arg:?} is not a whole number"))?;
                    if n == 0 {
                        return Err("count must be at least 1".to_string());
                    }
                    if n > MAX_POINTS {
                        return Err(format!("count {n} is more than {MAX_POINTS}"));
                    }
                    if kind == "log" && (a <= 0.0 || b <= 0.0) {
                        return Err("log-spaced ranges need positive ends".to_string());
                    }
                    if n == 1 {
                        return Ok(vec![fmt_num(a, 12)]);
                    }
                    let vals: Vec<String> = (0..n)
                        .map(|i| {
                            let t = i as f64 / (n - 1) as f64;
                            let v = if kind == "log" {
                                10f64.powf(a.log10() + t * (b.log10() - a.log10()))
                            } else {
                                a + t * (b - a)
                            };
                            fmt_num(v, 12)
                        })
                        .collect();
                    let mut seen = HashSet::new();
                    if vals.iter().any(|v| !seen.insert(v.clone())) {
                        return Err("values repeat (are the ends equal?)".to_string());
                    }
                    Ok(vals)
                }
                other => Err(format!(
                    "unknown range kind {other:?}; expected step, log or lin"
                )),
            }
        }
    }
}

/// `v` with at most `sig` significant digits, without an exponent or trailing zeros.
pub fn fmt_num(v: f64, sig: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 {
            "0".to_string()
        } else {
            v.to_string()
        };
    }
    let mag = v.abs().log10().floor() as i32;
    let decimals = (sig - 1 - mag).max(0);
    let factor = 10f64.powi(decimals.min(300));
    let rounded = (v * factor).round() / factor;
    let s = format!("{rounded}");
    if s == "-0" { "0".to_string() } else { s }
}

/// A small, version-independent PRNG (SplitMix64), so a seed means the same jobs forever.
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
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

impl SweepSpec {
    /// Adds a grid dimension, refusing a key that is already used.
    pub fn push_grid(&mut self, dim: Dim) -> Result<(), SweepError> {
        if self.has_key(&dim.key) {
            return Err(SweepError::DuplicateKey { key: dim.key });
        }
        self.grid.push(dim);
        Ok(())
    }

    fn has_key(&self, key: &str) -> bool {
        self.grid.iter().any(|d| d.key == key)
            || self.random.iter().any(|(k, _)| k == key)
            || self.fixed.iter().any(|(k, _)| k == key)
    }

    /// Every parameter key.
    pub fn keys(&self) -> Vec<String> {
        self.grid
            .iter()
            .map(|d| d.key.clone())
            .chain(self.random.iter().map(|(k, _)| k.clone()))
            .chain(self.fixed.iter().map(|(k, _)| k.clone()))
            .collect()
    }

    /// Folds another spec (e.g. from a sweep file) into this one.
    pub fn merge(&mut self, other: SweepSpec) -> Result<(), SweepError> {
        for d in other.grid {
            self.push_grid(d)?;
        }
        for (k, dist) in other.random {
            if self.has_key(&k) {
                return Err(SweepError::DuplicateKey { key: k });
            }
            self.random.push((k, dist));
        }
        for (k, v) in other.fixed {
            if self.has_key(&k) {
                return Err(SweepError::DuplicateKey { key: k });
            }
            self.fixed.push((k, v));
        }
        if self.sample.is_none() {
            self.sample = other.sample;
        }
        if self.seed == 0 {
            self.seed = other.seed;
        }
        Ok(())
    }

    /// Number of grid points (1 for no grid).
    pub fn grid_size(&self) -> u128 {
        self.grid.iter().map(|d| d.values.len() as u128).product()
    }

    /// Expands into points; see the module docs for the rules.
    pub fn expand(&self) -> Result<Vec<Point>, SweepError> {
        if self.sample == Some(0) {
            return Err(SweepError::ZeroSample);
        }
        let fixed = self.fixed.clone();
        let size = self.grid_size();
        if !self.random.is_empty() {
            let n = self.sample.ok_or_else(|| SweepError::NeedSample {
                keys: self
                    .random
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if n > MAX_POINTS {
                return Err(SweepError::TooLarge { count: n as u128 });
            }
            let mut rng = SplitMix64::new(self.seed);
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let mut params = Vec::with_capacity(self.grid.len() + self.random.len());
                for d in &self.grid {
                    let i = rng.below(d.values.len() as u64) as usize;
                    params.push((d.key.clone(), d.values[i].clone()));
                }
                for (k, dist) in &self.random {
                    params.push((k.clone(), draw(dist, &mut rng)));
                }
                out.push(Point {
                    params,
                    fixed: fixed.clone(),
                });
            }
            return Ok(out);
        }
        if size > MAX_POINTS as u128 {
            return Err(SweepError::TooLarge { count: size });
        }
        let size = size as usize;
        let indices: Vec<usize> = match self.sample {
            Some(n) if n < size => {
                // Partial Fisher–Yates over the grid indices, then back into grid order.
                let mut idx: Vec<usize> = (0..size).collect();
                let mut rng = SplitMix64::new(self.seed);
                for i in 0..n {
                    let j = i + rng.below((size - i) as u64) as usize;
                    idx.swap(i, j);
                }
                let mut chosen = idx[..n].to_vec();
                chosen.sort_unstable();
                chosen
            }
            _ => (0..size).collect(),
        };
        Ok(indices
            .into_iter()
            .map(|mut i| {
                // Last dimension varies fastest, like nested loops in flag order.
                let mut params = vec![(String::new(), String::new()); self.grid.len()];
                for (slot, d) in params.iter_mut().zip(self.grid.iter()).rev() {
                    let n = d.values.len();
                    *slot = (d.key.clone(), d.values[i % n].clone());
                    i /= n;
                }
                Point {
                    params,
                    fixed: fixed.clone(),
                }
            })
            .collect())
    }
}

fn draw(dist: &Dist, rng: &mut SplitMix64) -> String {
    match dist {
        Dist::Choice(vs) => vs[rng.below(vs.len() as u64) as usize].clone(),
        Dist::Uniform(a, b) => fmt_num(a + (b - a) * rng.next_f64(), 6),
        Dist::LogUniform(a, b) => {
            let (la, lb) = (a.ln(), b.ln());
            fmt_num((la + (lb - la) * rng.next_f64()).exp(), 6)
        }
        Dist::Int(a, b) => {
            let span = (*b as i128 - *a as i128 + 1) as u64;
            (*a as i128 + rng.below(span) as i128).to_string()
        }
    }
}

fn toml_scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(fmt_num(*f, 12)),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn toml_f64(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Parses a TOML sweep file's text; `path` is only used in messages.
pub fn parse_sweep_file(text: &str, path: &str) -> Result<SweepSpec, SweepError> {
    let file_err = |why: String| SweepError::File {
        path: path.to_string(),
        why,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(e.to_string().trim().to_string()))?;
    let mut spec = SweepSpec::default();
    for (k, v) in &table {
        match k.as_str() {
            "samples" => {
                let n = v
                    .as_integer()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| file_err(format!("samples = {v} is not a positive integer")))?;
                spec.sample = Some(n as usize);
            }
            "seed" => {
                let s = v
                    .as_integer()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| file_err(format!("seed = {v} is not a non-negative integer")))?;
                spec.seed = s as u64;
            }
            "grid" | "random" | "fixed" => {}
            other => {
                return Err(file_err(format!(
                    "unknown key {other:?} (expected samples, seed, [grid], [random], [fixed])"
                )));
            }
        }
    }
    let section = |name: &str| -> Result<BTreeMap<String, toml::Value>, SweepError> {
        match table.get(name) {
            None => Ok(BTreeMap::new()),
            Some(toml::Value::Table(t)) => {
                Ok(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            Some(other) => Err(file_err(format!(
                "[{name}] must be a table, not {}",
                other.type_str()
            ))),
        }
    };
    for (k, v) in section("fixed")? {
        check_key(&k)?;
        let s = toml_scalar(&v).ok_or_else(|| {
            file_err(format!(
                "fixed {k} = {v} is not a string, number or boolean"
            ))
        })?;
        if spec.has_key(&k) {
            return Err(SweepError::DuplicateKey { key: k });
        }
        spec.fixed.push((k, s));
    }
    for (k, v) in section("grid")? {
        check_key(&k)?;
        let values = match &v {
            toml::Value::String(s) => parse_values(&k, s)?,
            toml::Value::Array(items) => {
                if items.is_empty() {
                    return Err(SweepError::BadSpec {
                        key: k.clone(),
                        value: "[]".to_string(),
                        why: "no values".to_string(),
                    });
                }
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(toml_scalar(item).ok_or_else(|| {
                        file_err(format!(
                            "grid {k}: {item} is not a string, number or boolean"
                        ))
                    })?);
                }
                let mut seen = HashSet::new();
                if let Some(dup) = out.iter().find(|x| !seen.insert(x.as_str())) {
                    return Err(SweepError::BadSpec {
                        key: k.clone(),
                        value: v.to_string(),
                        why: format!("value {dup:?} is listed twice"),
                    });
                }
                out
            }
            other => {
                return Err(file_err(format!(
                    "grid {k} = {other} must be a list or a range string"
                )));
            }
        };
        spec.push_grid(Dim { key: k, values })?;
    }
    for (k, v) in section("random")? {
        check_key(&k)?;
        let bad = |why: &str| SweepError::BadSpec {
            key: k.clone(),
            value: v.to_string(),
            why: why.to_string(),
        };
        let t = v
            .as_table()
            .filter(|t| t.len() == 1)
            .ok_or_else(|| bad("expected exactly one of { choice = [...] }, { uniform = [a, b] }, { log_uniform = [a, b] }, { int = [a, b] }"))?;
        let (kind, arg) = t.iter().next().ok_or_else(|| bad("empty"))?;
        let pair = |arg: &toml::Value| -> Option<(f64, f64)> {
            let a = arg.as_array()?;
            if a.len() != 2 {
                return None;
            }
            Some((toml_f64(&a[0])?, toml_f64(&a[1])?))
        };
        let dist = match kind.as_str() {
            "choice" => {
                let items = arg
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad("choice needs a non-empty list"))?;
                let vals: Option<Vec<String>> = items.iter().map(toml_scalar).collect();
                Dist::Choice(
                    vals.ok_or_else(|| bad("choice values must be strings, numbers or booleans"))?,
                )
            }
            "uniform" => {
                let (a, b) = pair(arg).ok_or_else(|| bad("uniform needs [low, high]"))?;
                if a >= b {
                    return Err(bad("uniform needs low < high"));
                }
                Dist::Uniform(a, b)
            }
            "log_uniform" => {
                let (a, b) = pair(arg).ok_or_else(|| bad("log_uniform needs [low, high]"))?;
                if a <= 0.0 || a >= b {
                    return Err(bad("log_uniform needs 0 < low < high"));
                }
                Dist::LogUniform(a, b)
            }
            "int" => {
                let a = arg
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .ok_or_else(|| bad("int needs [low, high]"))?;
                let (Some(lo), Some(hi)) = (a[0].as_integer(), a[1].as_integer()) else {
                    return Err(bad("int bounds must be integers"));
                };
                if lo > hi {
                    return Err(bad("int needs low <= high"));
                }
                Dist::Int(lo, hi)
            }
            other => return Err(bad(&format!("unknown distribution {other:?}"))),
        };
        if spec.has_key(&k) {
            return Err(SweepError::DuplicateKey { key: k });
        }
        spec.random.push((k, dist));
    }
    Ok(spec)
}

/// Replaces `{key}` placeholders in `text` with values from `point` (see the module docs).
pub fn substitute(text: &str, point: &Point) -> Result<String, SweepError> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'{' && bytes.get(i + 1) == Some(&b'{') {
            out.push('{');
            i += 2;
            continue;
        }
        if c == b'}' && bytes.get(i + 1) == Some(&b'}') {
            out.push('}');
            i += 2;
            continue;
        }
        if c == b'{'
            && (i == 0 || bytes[i - 1] != b'$')
            && let Some(len) = text[i + 1..].find('}')
        {
            let name = &text[i + 1..i + 1 + len];
            if check_key(name).is_ok() {
                match point.get(name) {
                    Some(v) => {
                        out.push_str(v);
                        i += len + 2;
                        continue;
                    }
                    None => {
                        let known: Vec<&str> = point.all().map(|(k, _)| k).collect();
                        return Err(SweepError::UnknownPlaceholder {
                            name: name.to_string(),
                            text: text.to_string(),
                            known: if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            },
                        });
                    }
                }
            }
        }
        // Copy one whole UTF-8 character.
        let ch_len = text[i..].chars().next().map(char::len_utf8).unwrap_or(1);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(arg: &str) -> Vec<String> {
        parse_sweep_arg(arg).unwrap().values
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(vals("lr=0.1,0.01"), ["0.1", "0.01"]);
        assert_eq!(vals("seed=0..4"), ["0", "1", "2", "3"]);
        assert_eq!(vals("seed=0..=4"), ["0", "1", "2", "3", "4"]);
        assert_eq!(vals("x=0..1:step:0.25"), ["0", "0.25", "0.5", "0.75"]);
        assert_eq!(vals("x=0..=1:step:0.25"), ["0", "0.25", "0.5", "0.75", "1"]);
        assert_eq!(vals("x=0..=0.3:step:0.1"), ["0", "0.1", "0.2", "0.3"]);
        assert_eq!(vals("b=16..=64:step:16"), ["16", "32", "48", "64"]);
        assert_eq!(
            vals("lr=1e-4..1e-1:log:4"),
            ["0.0001", "0.001", "0.01", "0.1"]
        );
        assert_eq!(vals("x=0..1:lin:5"), ["0", "0.25", "0.5", "0.75", "1"]);
        assert_eq!(vals("d=../a,../b"), ["../a", "../b"]);
        assert_eq!(vals("s=-2..1"), ["-2", "-1", "0"]);
    }

    #[test]
    fn bad_specs_name_key_and_value() {
        for (arg, needle) in [
            ("lr=", "lr=\"\""),
            ("lr=0.1,,0.2", "empty value"),
            ("seed=10..0", "empty"),
            ("seed=0..", "no end"),
            ("x=0.5..2", "integer ends"),
            ("x=0..1:step:0", "positive"),
            ("x=0..1:log:3", "positive ends"),
            ("x=1..2:cubic:3", "unknown range kind"),
            ("x=1,1", "twice"),
        ] {
            let err = parse_sweep_arg(arg).unwrap_err().to_string();
            assert!(err.contains(needle), "{arg}: {err}");
            assert!(err.contains(arg.split('=').next().unwrap()), "{arg}: {err}");
        }
        assert!(matches!(
            parse_sweep_arg("lr"),
            Err(SweepError::MissingEquals { .. })
        ));
        assert!(matches!(
            parse_sweep_arg("1x=2"),
            Err(SweepError::BadKey { .. })
        ));
    }

    #[test]
    fn grid_is_a_cartesian_product_in_flag_order() {
        let mut s = SweepSpec::default();
        s.push_grid(parse_sweep_arg("lr=0.1,0.01").unwrap())
            .unwrap();
        s.push_grid(parse_sweep_arg("seed=0..3").unwrap()).unwrap();
        let names: Vec<String> = s.expand().unwrap().iter().map(Point::name).collect();
        assert_eq!(
            names,
            [
                "lr=0.1,seed=0",
                "lr=0.1,seed=1",
                "lr=0.1,seed=2",
                "lr=0.01,seed=0",
                "lr=0.01,seed=1",
                "lr=0.01,seed=2"
            ]
        );
        assert!(matches!(
            s.push_grid(parse_sweep_arg("lr=1").unwrap()),
            Err(SweepError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn sampling_is_reproducible_and_distinct() {
        let mut s = SweepSpec::default();
        s.push_grid(parse_sweep_arg("a=0..10").unwrap()).unwrap();
        s.push_grid(parse_sweep_arg("b=0..10").unwrap()).unwrap();
        s.sample = Some(7);
        s.seed = 42;
        let one = s.expand().unwrap();
        let two = s.expand().unwrap();
        assert_eq!(one, two);
        assert_eq!(one.len(), 7);
        let names: HashSet<String> = one.iter().map(Point::name).collect();
        assert_eq!(names.len(), 7);
        s.seed = 43;
        assert_ne!(s.expand().unwrap(), one);
    }

    #[test]
    fn sweep_file_grid_random_fixed() {
        let text = r#"
            samples = 5
            seed = 3
            [fixed]
            epochs = 10
            [grid]
            opt = ["adam", "sgd"]
            [random]
            lr = { log_uniform = [1e-5, 1e-1] }
            layers = { int = [2, 4] }
            act = { choice = ["relu", "gelu"] }
            p = { uniform = [0.0, 0.5] }
        "#;
        let spec = parse_sweep_file(text, "s.toml").unwrap();
        let pts = spec.expand().unwrap();
        assert_eq!(pts.len(), 5);
        assert_eq!(
            pts,
            parse_sweep_file(text, "s.toml").unwrap().expand().unwrap()
        );
        for p in &pts {
            assert_eq!(p.get("epochs"), Some("10"));
            let lr: f64 = p.get("lr").unwrap().parse().unwrap();
            assert!((1e-5..=1e-1).contains(&lr), "{lr}");
            let layers: i64 = p.get("layers").unwrap().parse().unwrap();
            assert!((2..=4).contains(&layers));
            assert!(["relu", "gelu"].contains(&p.get("act").unwrap()));
            let prob: f64 = p.get("p").unwrap().parse().unwrap();
            assert!((0.0..0.5).contains(&prob));
            assert!(!p.name().contains("epochs"));
        }
        let err = parse_sweep_file("[random]\nlr = { uniform = [1, 0] }", "s.toml").unwrap_err();
        assert!(err.to_string().contains("lr"), "{err}");
        let err = parse_sweep_file("[random]\nlr = { uniform = [0, 1] }", "s.toml")
            .unwrap()
            .expand()
            .unwrap_err();
        assert!(matches!(err, SweepError::NeedSample { .. }));
        let err = parse_sweep_file("smaples = 3", "s.toml").unwrap_err();
        assert!(err.to_string().contains("smaples"), "{err}");
        let err = parse_sweep_file("[grid]\nseed = \"5..1\"", "s.toml").unwrap_err();
        assert!(err.to_string().contains("seed"), "{err}");
    }

    #[test]
    fn placeholders() {
        let p = Point {
            params: vec![("lr".into(), "0.1".into())],
            fixed: vec![("epochs".into(), "3".into())],
        };
        assert_eq!(
            substitute("--lr={lr} -e {epochs}", &p).unwrap(),
            "--lr=0.1 -e 3"
        );
        assert_eq!(
            substitute("echo ${HOME} {{lr}} {\"a\": 1}", &p).unwrap(),
            "echo ${HOME} {lr} {\"a\": 1}"
        );
        let err = substitute("--seed {seed}", &p).unwrap_err().to_string();
        assert!(
            err.contains("{seed}") && err.contains("lr, epochs"),
            "{err}"
        );
        assert_eq!(substitute("héllo {lr}", &p).unwrap(), "héllo 0.1");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(0.1 + 0.2, 12), "0.3");
        assert_eq!(fmt_num(1e-4, 12), "0.0001");
        assert_eq!(fmt_num(123456.0, 12), "123456");
        assert_eq!(fmt_num(0.000123456789, 6), "0.000123457");
    }
}
