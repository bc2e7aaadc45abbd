//! `vasticlaude budget`: budgets per experiment, per user and for the workspace.

use ledger::{BudgetScope, BudgetSpec, Usd};

use crate::commands::ledger::{ledger_err, now_ms, open_ledger};
use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set a budget: `budget set EXPERIMENT AMOUNT`, `budget set --user U AMOUNT` or
    /// `budget set --workspace AMOUNT`.
    Set(SetArgs),
    /// List budgets with what has been spent and reserved against them.
    List(ListArgs),
    /// Remove a budget: `budget remove EXPERIMENT`, `--user U` or `--workspace`.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// EXPERIMENT AMOUNT, or just AMOUNT with --user/--workspace. Amounts in US dollars
    /// (12.50 or $12.50).
    #[arg(value_name = "EXPERIMENT AMOUNT", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// A budget for this user (all their experiments).
    #[arg(long, conflicts_with = "workspace")]
    pub user: Option<String>,
    /// A budget for the whole workspace.
    #[arg(long)]
    pub workspace: bool,
    /// Warning thresholds in percent (default 50,80,100).
    #[arg(long, value_name = "PCT,PCT")]
    pub warn: Option<String>,
    /// Reaching the budget stops the work: checkpoint, pull, destroy (the default).
    #[arg(long, conflicts_with = "soft")]
    pub hard: bool,
    /// Reaching the budget only alerts.
    #[arg(long)]
    pub soft: bool,
    /// Send alerts for this budget here (default: the report schedules' addresses).
    #[arg(long, value_name = "ADDR")]
    pub email: Option<String>,
    /// Print the stored budget as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The experiment (omit with --user/--workspace).
    pub experiment: Option<String>,
    #[arg(long, conflicts_with = "workspace")]
    pub user: Option<String>,
    #[arg(long)]
    pub workspace: bool,
}

pub async fn run(cmd: Command, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        Command::Set(a) => set(a, ctx).await,
        Command::List(a) => list(a, ctx).await,
        Command::Remove(a) => remove(a, ctx).await,
    }
}

fn scope_of(
    positional: Option<&str>,
    user: Option<&str>,
    workspace: bool,
    what: &str,
) -> anyhow::Result<BudgetScope> {
    match (positional, user, workspace) {
        (None, None, true) => Ok(BudgetScope::Workspace),
        (None, Some(u), false) if !u.trim().is_empty() => Ok(BudgetScope::User(u.to_string())),
        (Some(e), None, false) if !e.trim().is_empty() => {
            Ok(BudgetScope::Experiment(e.to_string()))
        }
        (Some(e), _, _) => Err(UsageError(format!(
            "{what}: got experiment {e:?} together with --user/--workspace; give one scope"
        ))
        .into()),
        _ => Err(UsageError(format!(
            "{what}: name an experiment, or use --user USER or --workspace"
        ))
        .into()),
    }
}

async fn set(a: SetArgs, ctx: &Context) -> anyhow::Result<()> {
    let (target, amount) = match a.args.as_slice() {
        [only] if a.user.is_none() && !a.workspace => {
            return Err(UsageError(format!(
                "budget set: missing AMOUNT after {only:?} (budget set EXPERIMENT AMOUNT, or --user U AMOUNT, or --workspace AMOUNT)"
            ))
            .into());
        }
        [amount] => (None, amount.as_str()),
        [target, amount] => (Some(target.as_str()), amount.as_str()),
        _ => return Err(UsageError("budget set: expected EXPERIMENT AMOUNT".into()).into()),
    };
    let scope = scope_of(target, a.user.as_deref(), a.workspace, "budget set")?;
    let amount: Usd = amount
        .parse()
        .map_err(|e: ledger::MoneyError| UsageError(format!("budget set: {e}")))?;
    if amount.is_negative() {
        return Err(UsageError(format!("budget set: amount {} is negative", amount.0)).into());
    }
    let warn = a
        .warn
        .as_deref()
        .map(ledger::parse_warn_percents)
        .transpose()
        .map_err(ledger_err)?;
    if let Some(e) = &a.email {
        ledger::email::parse_address(e).map_err(|e| UsageError(e.to_string()))?;
    }
    let l = open_ledger(ctx).await?;
    // Options not given keep their stored values when the budget already exists.
    let existing = l.budget(&scope).await.map_err(ledger_err)?;
    let mut spec = BudgetSpec::new(scope, amount);
    if let Some(b) = &existing {
        spec.warn_percents = b.warn_percents.clone();
        spec.hard = b.hard;
        spec.notify_email = b.notify_email.clone();
    }
    if let Some(w) = warn {
        spec.warn_percents = w;
    }
    if a.hard {
        spec.hard = true;
    }
    if a.soft {
        spec.hard = false;
    }
    if a.email.is_some() {
        spec.notify_email = a.email.clone();
    }
    let b = l.set_budget(&spec, now_ms()).await.map_err(ledger_err)?;
    if a.json {
        return print_json(&b);
    }
    println!(
        "budget for {} set to {} ({}, warn at {}%)",
        b.scope,
        b.amount,
        if b.hard { "hard" } else { "soft" },
        b.warn_percents
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(())
}

async fn list(a: ListArgs, ctx: &Context) -> anyhow::Result<()> {
    let l = open_ledger(ctx).await?;
    let st = l.budget_status().await.map_err(ledger_err)?;
    if a.json {
        return print_json(&st);
    }
    if st.is_empty() {
        println!("No budgets. Set one with: vasticlaude budget set EXPERIMENT AMOUNT");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = st
        .iter()
        .map(|s| {
            vec![
                s.budget.scope.kind().to_string(),
                s.budget.scope.subject().to_string(),
                s.budget.amount.to_string(),
                s.spent.to_string(),
                s.reserved.to_string(),
                s.left.to_string(),
                s.used_percent
                    .map_or_else(|| "-".into(), |p| format!("{p}%")),
                if s.budget.hard { "hard" } else { "soft" }.to_string(),
                s.budget
                    .warn_percents
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                s.budget.notify_email.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        ledger::render_table(
            &[
                "Scope",
                "Name",
                "Budget",
                "Spent",
                "Reserved",
                "Left",
                "Used",
                "Type",
                "Warn %",
                "Alerts to",
            ],
            &rows
        )
    );
    Ok(())
}

async fn remove(a: RemoveArgs, ctx: &Context) -> anyhow::Result<()> {
    let scope = scope_of(
        a.experiment.as_deref(),
        a.user.as_deref(),
        a.workspace,
        "budget remove",
    )?;
    let l = open_ledger(ctx).await?;
    l.remove_budget(&scope).await.map_err(ledger_err)?;
    println!("budget for {scope} removed");
    Ok(())
}
