//! `vasticlaude instances`: the Vast.ai instances on the account (all of them, not only ours),
//! and destroying one with verification, since Vast instances can reappear after a destroy.

use anyhow::Context as _;
use prettytable::{Table, format, row};
use vast::client::VastClient;
use vast::types::Instance;

use crate::context::Context;
use crate::output::print_json;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the account's instances.
    List {
        /// Only instances whose label starts with this.
        #[arg(long)]
        label: Option<String>,
        /// Print Vast's own JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one instance.
    Show {
        id: u64,
        /// Print Vast's own JSON.
        #[arg(long)]
        json: bool,
    },
    /// Destroy an instance and check that it is gone.
    Destroy { id: u64 },
}

pub async fn run(cmd: Command, _ctx: &Context) -> anyhow::Result<()> {
    let client = VastClient::from_env()?;
    match cmd {
        Command::List { label, json } => {
            let list = client
                .list_instances(label.as_deref())
                .await
                .context("listing Vast instances")?;
            if json {
                return print_json(&list);
            }
            print_list(&list);
            Ok(())
        }
        Command::Show { id, json } => {
            let inst = client
                .get_instance(id)
                .await
                .with_context(|| format!("reading Vast instance {id}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("instance {id} not found (destroyed, or not on this account)")
                })?;
            if json {
                return print_json(&inst);
            }
            print_one(&inst);
            Ok(())
        }
        Command::Destroy { id } => {
            client
                .destroy_and_verify(id)
                .await
                .with_context(|| format!("destroying Vast instance {id}"))?;
            println!("destroyed instance {id} (verified gone)");
            Ok(())
        }
    }
}

fn status(i: &Instance) -> String {
    let actual = i.actual_status.as_deref().unwrap_or("provisioning");
    match i.intended_status.as_deref() {
        Some(want) if want != actual => format!("{actual} (→ {want})"),
        _ => actual.to_string(),
    }
}

fn ssh(i: &Instance) -> String {
    i.ssh_endpoint()
        .map_or_else(|| "-".to_string(), |e| format!("{}:{}", e.host, e.port))
}

fn money(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.4}"))
}

fn print_list(list: &[Instance]) {
    if list.is_empty() {
        println!("no instances");
        return;
    }
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_CLEAN);
    t.set_titles(row![
        "id", "label", "status", "gpu", "num", "$/h", "bid", "ssh"
    ]);
    for i in list {
        t.add_row(row![
            i.id,
            i.label.as_deref().unwrap_or(""),
            status(i),
            i.gpu_name.as_deref().unwrap_or("-"),
            i.num_gpus.map_or_else(|| "-".into(), |n| n.to_string()),
            money(i.dph_total),
            if i.is_bid == Some(true) { "yes" } else { "no" },
            ssh(i),
        ]);
    }
    t.printstd();
}

fn print_one(i: &Instance) {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_CLEAN);
    let opt = |v: Option<&str>| v.unwrap_or("-").to_string();
    t.add_row(row!["id", i.id]);
    t.add_row(row!["label", opt(i.label.as_deref())]);
    t.add_row(row!["status", status(i)]);
    t.add_row(row!["status_msg", opt(i.status_msg.as_deref())]);
    t.add_row(row!["image", opt(i.image_uuid.as_deref())]);
    t.add_row(row![
        "gpu",
        format!(
            "{} x {}",
            i.num_gpus.map_or_else(|| "-".into(), |n| n.to_string()),
            opt(i.gpu_name.as_deref())
        )
    ]);
    t.add_row(row!["$/h total", money(i.dph_total)]);
    t.add_row(row![
        "interruptible",
        if i.is_bid == Some(true) { "yes" } else { "no" }
    ]);
    t.add_row(row!["ssh", ssh(i)]);
    t.add_row(row!["location", opt(i.geolocation.as_deref())]);
    t.printstd();
}
