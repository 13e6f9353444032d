//! `chorus-sim` (also reached as `chorus sim`): runs seeded simulations and
//! reports what they found.

use std::io::Write as _;
use std::time::Instant;

use chorus_sim::faults::{self, FaultKind};
use chorus_sim::run::{self, Options, Outcome};

const USAGE: &str = "\
Usage:
  chorus sim [--seed S] [--seeds K] [--nodes N] [--ops M] [--faults LIST] [--json] [--trace]

  --seed S      first seed (default: random); seeds S, S+1, ... S+K-1 run
  --seeds K     how many seeds (default 1)
  --nodes N     nodes, 2 to 16 (default 3)
  --ops M       client operations per seed (default 300)
  --faults LIST comma-separated classes each seed draws from: partition, partial,
                asymmetric, loss, delay, crash, skew, join; or all, none (default all)
  --json        one JSON object per seed on stdout instead of the table
  --trace       print each seed's full trace (commands, replies, faults, digests)

A failing seed prints the command that replays it exactly.
";

struct Args {
    seed: u64,
    seeds: u64,
    nodes: usize,
    ops: usize,
    faults: Vec<FaultKind>,
    json: bool,
    trace: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        seed: rand::random::<u32>() as u64,
        seeds: 1,
        nodes: 3,
        ops: 300,
        faults: faults::ALL.to_vec(),
        json: false,
        trace: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|_| "--seed expects a number")?
            }
            "--seeds" => {
                a.seeds = value("--seeds")?
                    .parse()
                    .map_err(|_| "--seeds expects a number")?
            }
            "--nodes" => {
                a.nodes = value("--nodes")?
                    .parse()
                    .ok()
                    .filter(|n| (2..=16).contains(n))
                    .ok_or("--nodes expects 2 to 16")?
            }
            "--ops" => {
                a.ops = value("--ops")?
                    .parse()
                    .map_err(|_| "--ops expects a number")?
            }
            "--faults" => a.faults = faults::parse_list(&value("--faults")?)?,
            "--json" => a.json = true,
            "--trace" => a.trace = true,
            "-h" | "--help" | "help" => return Err(String::new()),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(a)
}

fn replay_command(a: &Args, seed: u64) -> String {
    format!(
        "cargo run --release -p chorus-sim -- --seed {seed} --nodes {} --ops {} --faults {} --trace",
        a.nodes,
        a.ops,
        faults::list_text(&a.faults)
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
        "failure": out.failure.as_ref().map(|f| serde_json::json!({"kind": f.kind, "detail": f.detail})),
        "replay": replay,
    })
    .to_string()
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("chorus sim: {e}\n");
            }
            eprint!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let started = Instant::now();
    let mut failures: Vec<(Outcome, String)> = Vec::new();
    let mut per_fault: std::collections::BTreeMap<FaultKind, u64> = Default::default();
    let (mut ops, mut sim_ms) = (0u64, 0u64);
    for i in 0..a.seeds {
        let seed = a.seed.wrapping_add(i);
        let out = run::run(&Options {
            seed,
            nodes: a.nodes,
            ops: a.ops,
            faults: a.faults.clone(),
        });
        ops += out.ops as u64;
        sim_ms += out.sim_ms;
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
    println!("{:<22} {}", "first seed", a.seed);
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
