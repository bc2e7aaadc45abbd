//! `vasticlaude logs JOB [--follow]`: a job's output — live from the instance folder while it
//! runs on the built-in simulator, else as pulled to
//! `$VASTICLAUDE_HOME/experiments/<experiment>/jobs/<job>/logs/` (the newest attempt).

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use scheduler::reconcile::engine::job_dir;
use scheduler::reconcile::runner::paths;

use crate::context::Context;
use crate::output::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job id.
    pub job: i64,
    /// Keep printing as the log grows (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,
    /// Show stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let state = super::journal::load(ctx).await?;
    let job = state
        .world
        .jobs
        .get(&args.job)
        .ok_or_else(|| UsageError(format!("no job {} in {}", args.job, ctx.home.display())))?;
    // A running attempt on the built-in simulator: its live log is in the instance folder.
    let live = job.attempt.as_ref().and_then(|a| {
        let vast_id = state.world.instances.get(&a.instance)?.vast_id?;
        let p = ctx
            .home
            .join("sim/instances")
            .join(vast_id.to_string())
            .join(paths::attempt(job.id, a.id).trim_start_matches('/'));
        p.is_dir().then_some(p)
    });
    let logs = job_dir(&ctx.home, &job.experiment, job.id).join("logs");
    let newest = std::fs::read_dir(&logs)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n: i64 = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("attempt-")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    let newest = live.map(|p| (i64::MAX, p)).or(newest);
    let Some((_, dir)) = newest else {
        anyhow::bail!(
            "no logs pulled yet for job {} ({}); they arrive when an attempt ends",
            job.id,
            job.state.as_str()
        );
    };
    let file = dir.join(if args.stderr {
        "stderr.log"
    } else {
        "stdout.log"
    });
    let mut f = std::fs::File::open(&file)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    if !args.follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pos = f.stream_position()?;
        let len = f.metadata()?.len();
        if len < pos {
            f.seek(SeekFrom::Start(0))?;
        }
        buf.clear();
        f.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
    }
}
