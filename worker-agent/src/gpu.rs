//! GPU sampling through `nvidia-smi`, which every NVIDIA image has and which needs no NVML
//! binding in a static binary. Where it is absent (CPU instances, every test machine) sampling
//! degrades to "no GPUs, with a reason" instead of failing the heartbeat.

use std::time::Duration;

use crate::protocol::GpuStat;

/// Query fields, in the order [`parse_nvidia_smi`] expects them.
pub const QUERY: &str =
    "index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw";

/// The nvidia-smi program: `VASTICLAUDE_NVIDIA_SMI` overrides it (tests, odd images).
pub fn nvidia_smi_program() -> String {
    std::env::var("VASTICLAUDE_NVIDIA_SMI").unwrap_or_else(|_| "nvidia-smi".to_string())
}

/// Parse `nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits`. Fields nvidia-smi
/// cannot read (`[N/A]`, `[Not Supported]`) become `None`.
pub fn parse_nvidia_smi(csv: &str) -> Result<Vec<GpuStat>, String> {
    let mut out = Vec::new();
    for line in csv.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 8 {
            return Err(format!(
                "nvidia-smi line has {} fields, expected 8: {line:?}",
                f.len()
            ));
        }
        let index = f[0]
            .parse()
            .map_err(|_| format!("nvidia-smi GPU index is not a number: {:?}", f[0]))?;
        let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
        out.push(GpuStat {
            index,
            uuid: Some(f[1].to_string()).filter(|u| !u.is_empty() && !u.starts_with('[')),
            name: f[2].to_string(),
            utilization_pct: num(f[3]),
            memory_used_mib: num(f[4]),
            memory_total_mib: num(f[5]),
            temperature_c: num(f[6]),
            power_w: num(f[7]),
        });
    }
    Ok(out)
}

/// Outcome of one sample.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuSample {
    Stats(Vec<GpuStat>),
    /// nvidia-smi is not installed: stop asking.
    Absent(String),
    /// It exists but failed this time (driver hiccup, timeout): try again next beat.
    Failed(String),
}

/// Run nvidia-smi once (bounded by `timeout`).
pub async fn sample(timeout: Duration) -> GpuSample {
    sample_with(&nvidia_smi_program(), timeout).await
}

/// Run the given nvidia-smi-compatible program once.
pub async fn sample_with(program: &str, timeout: Duration) -> GpuSample {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(format!("--query-gpu={QUERY}"))
        .arg("--format=csv,noheader,nounits")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => return GpuSample::Failed(format!("{program} took longer than {timeout:?}")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return GpuSample::Absent(format!("{program} not found"));
        }
        Ok(Err(e)) => return GpuSample::Failed(format!("{program} could not run: {e}")),
        Ok(Ok(o)) => o,
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = format!("{program} exited with {}: {}", out.status, err.trim());
        return GpuSample::Failed(msg);
    }
    match parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)) {
        Ok(v) => GpuSample::Stats(v),
        Err(e) => GpuSample::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_two_gpus_with_missing_fields() {
        let csv = "0, GPU-aaaa, NVIDIA H100 80GB HBM3, 97, 70123, 81559, 64, 612.40\n\
                   1, GPU-bbbb, NVIDIA H100 80GB HBM3, [N/A], 3, 81559, 31, [Not Supported]\n";
        let g = parse_nvidia_smi(csv).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].utilization_pct, Some(97.0));
        assert_eq!(g[0].power_w, Some(612.4));
        assert_eq!(g[1].index, 1);
        assert_eq!(g[1].utilization_pct, None);
        assert_eq!(g[1].power_w, None);
        assert_eq!(g[1].uuid.as_deref(), Some("GPU-bbbb"));
    }

    #[test]
    fn rejects_garbage_with_the_line() {
        let e = parse_nvidia_smi("No devices were found").unwrap_err();
        assert!(e.contains("No devices"), "{e}");
        assert!(parse_nvidia_smi("x, a, b, 1, 2, 3, 4, 5").is_err());
        assert_eq!(parse_nvidia_smi("\n").unwrap(), vec![]);
    }

    #[tokio::test]
    async fn absent_program_degrades() {
        let got = sample_with("/nonexistent/nvidia-smi-vc", Duration::from_secs(5)).await;
        assert!(
            matches!(&got, GpuSample::Absent(w) if w.contains("not found")),
            "{got:?}"
        );
        let got = sample_with("false", Duration::from_secs(5)).await;
        assert!(
            matches!(&got, GpuSample::Failed(w) if w.contains("exited")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_fake_nvidia_smi_is_sampled_and_parsed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("nvidia-smi");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$1\" in --query-gpu=index,uuid,*) ;; *) exit 9;; esac\n\
             echo '0, GPU-x, NVIDIA H200, 55, 1000, 143771, 40, 120.5'\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let got = sample_with(fake.to_str().unwrap(), Duration::from_secs(5)).await;
        let GpuSample::Stats(g) = got else {
            panic!("{got:?}")
        };
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "NVIDIA H200");
        assert_eq!(g[0].memory_total_mib, Some(143771.0));
    }
}
