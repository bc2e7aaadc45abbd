//! Reading training progress from what jobs already print.
//!
//! Jobs written for vasticlaude append JSON lines to `$VASTICLAUDE_PROGRESS_FILE`
//! (`{"step": 10, "total": 100, "loss": 0.31, "checkpoint": "ckpt/10.pt"}`). Jobs that know
//! nothing of us usually print `step N/M` or a tqdm bar (`45%|████▌     | 45/100 [00:10<…]`);
//! scanning their output for those gives a progress figure for free. Hand-written scanners
//! instead of a regex crate keep the static agent small.

use std::collections::BTreeMap;

/// What one line told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressUpdate {
    pub step: Option<u64>,
    pub total: Option<u64>,
    pub metrics: BTreeMap<String, f64>,
    pub checkpoint: Option<String>,
}

impl ProgressUpdate {
    fn is_empty(&self) -> bool {
        self.step.is_none()
            && self.total.is_none()
            && self.metrics.is_empty()
            && self.checkpoint.is_none()
    }
}

/// Parse one JSON line from the progress file. Numeric top-level fields other than
/// `step`/`total` and everything numeric under `metrics` become metrics.
pub fn parse_json_line(line: &str) -> Option<ProgressUpdate> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let obj = v.as_object()?;
    let mut u = ProgressUpdate::default();
    for (k, val) in obj {
        match k.as_str() {
            "step" => u.step = as_u64(val),
            "total" | "total_steps" | "max_steps" => u.total = as_u64(val),
            "checkpoint" => u.checkpoint = val.as_str().map(str::to_owned),
            "metrics" => {
                if let Some(m) = val.as_object() {
                    for (mk, mv) in m {
                        if let Some(f) = mv.as_f64().filter(|f| f.is_finite()) {
                            u.metrics.insert(mk.clone(), f);
                        }
                    }
                }
            }
            _ => {
                if let Some(f) = val.as_f64().filter(|f| f.is_finite()) {
                    u.metrics.insert(k.clone(), f);
                }
            }
        }
    }
    (!u.is_empty()).then_some(u)
}

fn as_u64(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

/// Scan a line of job output for `step N/M` or a tqdm bar. Returns `(step, total)`.
pub fn parse_output_line(line: &str) -> Option<(u64, u64)> {
    parse_tqdm(line).or_else(|| parse_step(line))
}

/// tqdm: `…%|bar| N/M [` — the counter sits between the closing `|` and ` [`.
fn parse_tqdm(line: &str) -> Option<(u64, u64)> {
    let pct = line.find("%|")?;
    let rest = &line[pct + 2..];
    let close = rest.find('|')?;
    let after = rest[close + 1..].trim_start();
    let end = after.find(['[', ' ']).unwrap_or(after.len());
    let (n, m) = split_ratio(after[..end].trim())?;
    Some((n, m))
}

/// `step 12/100`, `Step: 12 / 100`, `step=12/100` (case-insensitive, first match wins).
fn parse_step(line: &str) -> Option<(u64, u64)> {
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("step") {
        let start = from + i;
        from = start + 4;
        // A word boundary before "step" (so "bestep" or "steps" forms don't count twice).
        if start > 0 && lower.as_bytes()[start - 1].is_ascii_alphanumeric() {
            continue;
        }
        let rest = lower[start + 4..].trim_start_matches([' ', ':', '=', '\t']);
        let digits: usize = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            continue;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let rest = rest[digits..].trim_start();
        let Some(rest) = rest.strip_prefix('/').or_else(|| rest.strip_prefix("of ")) else {
            continue;
        };
        let rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            continue;
        }
        let m: u64 = rest[..digits].parse().ok()?;
        if n <= m && m > 0 {
            return Some((n, m));
        }
    }
    None
}

fn split_ratio(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('/')?;
    let n = a.trim().parse().ok()?;
    let m = b.trim().parse().ok()?;
    (n <= m && m > 0).then_some((n, m))
}

/// Splits a byte stream into lines on `\n` or `\r` (tqdm redraws with `\r`), keeping a
/// partial tail between calls and bounding it so one endless line cannot eat memory.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

const MAX_LINE: usize = 64 * 1024;

impl LineSplitter {
    /// Feed bytes; call `f` for each complete line.
    pub fn feed(&mut self, bytes: &[u8], mut f: impl FnMut(&str)) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.partial.is_empty() {
                    f(&String::from_utf8_lossy(&self.partial));
                    self.partial.clear();
                }
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
    }

    /// Flush what is left (at end of stream).
    pub fn finish(&mut self, mut f: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            f(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tqdm_bars() {
        assert_eq!(
            parse_output_line("45%|████▌     | 45/100 [00:10<00:12,  4.50it/s]"),
            Some((45, 100))
        );
        assert_eq!(
            parse_output_line(
                "Epoch 1:  12%|█▏        | 120/1000 [00:01<00:09, 95.2it/s, loss=0.3]"
            ),
            Some((120, 1000))
        );
        assert_eq!(
            parse_output_line("100%|██████████| 10/10 [00:01<00:00]"),
            Some((10, 10))
        );
        assert_eq!(
            parse_output_line("  0%|          | 0/50 [00:00<?, ?it/s]"),
            Some((0, 50))
        );
    }

    #[test]
    fn step_lines() {
        assert_eq!(parse_output_line("step 12/100 loss=0.5"), Some((12, 100)));
        assert_eq!(parse_output_line("[train] Step: 3 / 9"), Some((3, 9)));
        assert_eq!(parse_output_line("global step=40/80"), Some((40, 80)));
        assert_eq!(parse_output_line("Step 7 of 10"), Some((7, 10)));
    }

    #[test]
    fn non_progress_lines() {
        assert_eq!(parse_output_line("loss 0.5 at 12/100 tokens"), None);
        assert_eq!(
            parse_output_line("steps: 12/100"),
            None,
            "'steps' is not 'step N'"
        );
        assert_eq!(parse_output_line("step 120/100"), None, "step beyond total");
        assert_eq!(parse_output_line("step 5/0"), None);
        assert_eq!(parse_output_line("date 2024/05/06"), None);
        assert_eq!(parse_output_line(""), None);
        assert_eq!(parse_output_line("50%|bar| garbage [x]"), None);
    }

    #[test]
    fn json_lines() {
        let u =
            parse_json_line(r#"{"step": 10, "total": 100, "loss": 0.31, "checkpoint": "c/10.pt"}"#)
                .unwrap();
        assert_eq!(u.step, Some(10));
        assert_eq!(u.total, Some(100));
        assert_eq!(u.metrics.get("loss"), Some(&0.31));
        assert_eq!(u.checkpoint.as_deref(), Some("c/10.pt"));

        let u = parse_json_line(r#"{"step": 3, "metrics": {"acc": 0.9, "name": "x"}}"#).unwrap();
        assert_eq!(u.metrics.len(), 1);
        assert_eq!(u.total, None);

        assert_eq!(parse_json_line("not json"), None);
        assert_eq!(parse_json_line("[1,2]"), None);
        assert_eq!(parse_json_line(r#"{"note": "hi"}"#), None);
    }

    #[test]
    fn splitter_handles_cr_and_partial_lines() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.feed(b"a 1/2\r 50%|x| 1/2 [", |l| got.push(l.to_string()));
        s.feed(b"]\rdone\npart", |l| got.push(l.to_string()));
        s.finish(|l| got.push(l.to_string()));
        assert_eq!(got, vec!["a 1/2", " 50%|x| 1/2 []", "done", "part"]);
    }
}
