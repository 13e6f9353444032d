//! `chorus-sim` (also reached as `chorus sim`): runs seeded simulations and
//! reports what they found.

use std::io::Write as _;
use std::time::Instant;

use chorus_sim::faults::{self, FaultKind};
use chorus_sim::run::{self, Options, Outcome};
use clap::Parser;

/// Deterministic simulations of Chorus nodes: the real node code on a
/// simulated network under partitions, loss, delay, crashes and clock skew.
/// Each seed fixes everything (topology, faults, workload); a failing seed
/// prints the command that replays it exactly.
#[derive(Debug, Parser)]
#[command(name = "chorus-sim", bin_name = "chorus sim", version)]
struct Args {
    /// First seed (default: random); seeds S, S+1, ... S+K-1 run.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// How many seeds.
    #[arg(long, value_name = "K", default_value_t = 1)]
    seeds: u64,
    /// Nodes per simulation.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(2..=16))]
    nodes: u64,
    /// Client operations per seed.
    #[arg(long, value_name = "M", default_value_t = 300)]
    ops: usize,
    /// Comma-separated fault classes each seed draws from: partition, partial,
    /// asymmetric, loss, delay, crash, skew, join, jump, remove, large,
    /// restore; or all, none.
    #[arg(long, value_name = "LIST", default_value = "all", value_parser = fault_list)]
    faults: FaultList,
    /// One JSON object per seed on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Print each seed's full trace (commands, replies, faults, digests).
    #[arg(long)]
    trace: bool,
    /// Nodes never compare digests (repair mends some divergence a merge
    /// bug would leave; run soaks both ways).
    #[arg(long)]
    no_repair: bool,
    /// Every node's `removed-peer-grace` in seconds, instead of one drawn
    /// per seed (0 s, 1 s or an hour): 0 closes every removed member as soon
    /// as it settles.
    #[arg(long, value_name = "SECS")]
    removed_grace: Option<u64>,
}

/// The fault classes a run draws from (one command-line value).
#[derive(Debug, Clone)]
struct FaultList(Vec<FaultKind>);

fn fault_list(text: &str) -> Result<FaultList, String> {
    faults::parse_list(text).map(FaultList)
}

fn replay_command(a: &Args, seed: u64) -> String {
    format!(
        "cargo run --release -p chorus-sim -- --seed {seed} --nodes {} --ops {} --faults {}{}{} --trace",
        a.nodes,
        a.ops,
        faults::list_text(&a.faults.0),
        if a.no_repair { " --no-repair" } else { "" },
        a.removed_grace
            .map(|g| format!(" --removed-grace {g}"))
            .unwrap_or_default()
    )
}

fn json_line(out: &Outcome, replay: &str) -> String {
    serde_json::json!({
        "seed": out.seed,
        "ops": out.ops,
        "faults": out.injected.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "sim_ms": out.sim_ms,
        "real_ms": out.real_ms,
        "ok": out.failure.is_none(),
        "unchecked_keys": out.coverage.unchecked_keys,
        "removals_checked": out.coverage.removals_checked,
        "wiped": out.wiped,
        "failure": out.failure.as_ref().map(|f| serde_json::json!({"kind": f.kind, "detail": f.detail})),
        "replay": replay,
    })
    .to_string()
}

fn main() {
    let mut a = Args::parse();
    // The nodes' logs, for a replay: `RUST_LOG=info chorus-sim --seed S ...`.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let seed = a.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    chorus_sim::cluster::repair_off(a.no_repair);
    chorus_sim::cluster::force_removed_grace(a.removed_grace);
    a.seed = Some(seed);
    let nodes = a.nodes as usize;
    let started = Instant::now();
    let mut failures: Vec<(Outcome, String)> = Vec::new();
    let mut per_fault: std::collections::BTreeMap<FaultKind, u64> = Default::default();
    let (mut ops, mut sim_ms, mut unchecked, mut wiped) = (0u64, 0u64, 0usize, 0usize);
    let (mut removals, mut removal_seeds) = (0usize, 0usize);
    for i in 0..a.seeds {
        let seed = seed.wrapping_add(i);
        let out = run::run(&Options {
            seed,
            nodes,
            ops: a.ops,
            faults: a.faults.0.clone(),
        });
        ops += out.ops as u64;
        sim_ms += out.sim_ms;
        unchecked += out.coverage.unchecked_keys;
        removals += out.coverage.removals_checked;
        removal_seeds += usize::from(out.coverage.removals_checked > 0);
        wiped += out.wiped;
        for k in &out.injected {
            *per_fault.entry(*k).or_default() += 1;
        }
        let replay = replay_command(&a, seed);
        if a.trace {
            for line in &out.trace {
                println!("{line}");
            }
        }
        if a.json {
            println!("{}", json_line(&out, &replay));
        } else if !a.trace {
            let done = i + 1;
            let bar = (done * 30 / a.seeds.max(1)) as usize;
            eprint!(
                "\r[{}{}] {done}/{} seeds, {} failed",
                "#".repeat(bar),
                " ".repeat(30 - bar),
                a.seeds,
                failures.len() + usize::from(out.failure.is_some())
            );
            let _ = std::io::stderr().flush();
        }
        if out.failure.is_some() {
            failures.push((out, replay));
        }
    }
    if a.json {
        std::process::exit(i32::from(!failures.is_empty()));
    }
    eprintln!();
    let real = started.elapsed();
    let faults_text: Vec<String> = per_fault.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!();
    println!("{:<22} {}", "seeds run", a.seeds);
    println!("{:<22} {}", "first seed", seed);
    println!("{:<22} {}", "nodes", a.nodes);
    println!("{:<22} {}", "client ops", ops);
    println!(
        "{:<22} {}",
        "faults (seeds with)",
        if faults_text.is_empty() {
            "none".into()
        } else {
            faults_text.join(", ")
        }
    );
    println!("{:<22} {:.1} s", "simulated time", sim_ms as f64 / 1000.0);
    println!(
        "{:<22} {:.1} s ({:.1}x real time)",
        "real time",
        real.as_secs_f64(),
        sim_ms as f64 / 1000.0 / real.as_secs_f64().max(1e-9)
    );
    println!(
        "{:<22} {:.0}",
        "seeds per minute",
        a.seeds as f64 * 60.0 / real.as_secs_f64().max(1e-9)
    );
    println!(
        "{:<22} {} (too many ways their open writes may have gone, or no sure winner)",
        "keys left unchecked", unchecked
    );
    println!(
        "{:<22} {} (refused a removed member's writes, restarted empty)",
        "nodes wiped", wiped
    );
    println!(
        "{:<22} {removals} in {removal_seeds} seeds (set members an SREM that saw every SADD removed)",
        "removals checked"
    );
    println!("{:<22} {}", "failures", failures.len());
    for (out, replay) in &failures {
        let f = out.failure.as_ref().expect("only failures here");
        println!();
        println!("seed {} FAILED ({}): {}", out.seed, f.kind, f.detail);
        println!("  faults: {}", faults::list_text(&out.injected));
        println!("  replay: {replay}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
