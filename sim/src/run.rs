//! One seeded run: build the cluster, drive the workload while faults come
//! and go, heal everything, wait for convergence, check the invariants.
//!
//! Everything random derives from the seed (topology of faults, workload,
//! turmoil's network, node ids, hashers, QUIC's RNG), so a seed replays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus::store::MemStore;
use chorus_crdt::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::{self, History, Write, WriteKind};
use crate::clock;
use crate::cluster::{self, Registry};
use crate::faults::FaultKind;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub nodes: usize,
    pub ops: usize,
    /// The fault classes a seed may draw from (each seed picks a subset).
    pub faults: Vec<FaultKind>,
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub ops: usize,
    /// Faults injected, by class.
    pub injected: Vec<FaultKind>,
    pub sim_ms: u64,
    pub real_ms: u64,
    pub failure: Option<check::Failure>,
    /// What the checkers could and could not check.
    pub coverage: check::Coverage,
    /// Nodes restarted empty because a peer refused them a removed
    /// member's writes (`Run::wipe_refused`).
    pub wiped: usize,
    /// Every command with its reply, every fault, the final digests: two runs
    /// of one seed give the same trace.
    pub trace: Vec<String>,
}

/// How long healing may take before the run counts as a liveness failure.
const LIVENESS_LIMIT: Duration = Duration::from_secs(120);
const TICK: Duration = Duration::from_millis(1);

struct Run<'a> {
    sim: turmoil::Sim<'a>,
    reg: Registry,
    rng: StdRng,
    nodes: usize,
    trace: Vec<String>,
    history: History,
    coverage: check::Coverage,
    /// Session keys created so far (`rs0`, `rs1`, ...).
    sessions: usize,
    /// Some writes carry large values.
    large: bool,
    /// Refused lives wiped already.
    wiped_for: BTreeSet<NodeId>,
}

/// A fault in effect, and how to lift it.
#[derive(Debug, Clone)]
enum Active {
    Cut(Vec<(usize, usize)>),
    OneWay(usize, usize),
    Down(usize),
    /// A member out of the mesh.
    Removed(usize),
    /// A node whose store was copied; lifted, it restarts from the copy.
    Restore(usize, Backup),
}

/// A copy of a node's store (its `Debug` is short, for the trace).
#[derive(Clone)]
struct Backup(Arc<MemStore>);

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backup after {} cuts", self.0.cuts())
    }
}

pub fn run(opts: &Options) -> Outcome {
    let started = Instant::now();
    clock::reset();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    // Swarm testing: each seed draws its own mix of the allowed faults.
    let mut chosen: Vec<FaultKind> = opts
        .faults
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.6))
        .collect();
    if chosen.is_empty() && !opts.faults.is_empty() {
        chosen.push(opts.faults[rng.random_range(0..opts.faults.len())]);
    }
    let nodes = opts.nodes.clamp(2, clock::MAX_NODES);
    chosen.retain(|k| nodes >= 3 || *k != FaultKind::Partial);

    let mut builder = turmoil::Builder::new();
    builder
        .simulation_duration(Duration::from_secs(3_600))
        // A fixed start: turmoil's default is the real time of day.
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .tick_duration(TICK)
        .udp_capacity(1 << 16)
        .rng_seed(rng.random())
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(5));
    if chosen.contains(&FaultKind::Delay) {
        // A distance, not a shuffle: turmoil draws each datagram's delay
        // on its own, so any jitter reorders a burst (a real path's queues
        // keep order), QUIC reads the reordering as loss, and a state
        // transfer of large values crawled for minutes at 0.2-250 ms.
        let delay = Duration::from_millis(rng.random_range(50..250));
        builder
            .min_message_latency(delay)
            .max_message_latency(delay);
    }
    if chosen.contains(&FaultKind::Loss) {
        builder
            .fail_rate(rng.random_range(0.01..0.05))
            .repair_rate(0.5);
    }
    let sim = builder.build();
    let reg = cluster::registry(&cluster::stores_for(opts.seed, nodes));
    let mut run = Run {
        sim,
        reg,
        rng,
        nodes,
        trace: Vec::new(),
        history: History::default(),
        coverage: check::Coverage::default(),
        sessions: 0,
        large: chosen.contains(&FaultKind::Large),
        wiped_for: BTreeSet::new(),
    };
    // Drawn from the seed, not the workload's stream: past the grace (0 s
    // always, 1 s at times) a removed member holding writes the others never
    // received is refused when it comes back, and wiped; within it (an
    // hour), taken back whole.
    let grace = cluster::forced_removed_grace()
        .unwrap_or([0, 1, 3_600][(cluster::splitmix(opts.seed ^ 0x0067_7261_6365) % 3) as usize]);
    cluster::set_removed_grace(grace);
    run.note(format!("removed-peer-grace {grace}s"));
    if chosen.contains(&FaultKind::Skew) {
        for slot in 0..nodes {
            let skew = run.rng.random_range(-4_000i64..=4_000);
            clock::set_skew_ms(slot, skew);
            run.note(format!("fault skew n{slot} {skew}ms"));
        }
    }
    let late = chosen.contains(&FaultKind::Join).then(|| nodes - 1);
    let ops_span = Duration::from_millis(opts.ops as u64 * 15);
    for slot in 0..nodes {
        let peers = (0..nodes)
            .filter(|p| *p != slot)
            .map(cluster::host_name)
            .collect();
        let delay = if late == Some(slot) {
            ops_span / 2
        } else {
            Duration::ZERO
        };
        cluster::add_node(&mut run.sim, &run.reg, opts.seed, slot, peers, delay);
    }
    let stored: Vec<String> = run
        .reg
        .borrow()
        .iter()
        .filter(|s| s.store.is_some())
        .map(|s| s.name.clone())
        .collect();
    run.note(format!("stores on [{}]", stored.join(" ")));
    if let Some(slot) = late {
        run.note(format!(
            "fault join n{slot} after {}ms",
            (ops_span / 2).as_millis()
        ));
    }

    let failure = run
        .drive(opts, &chosen)
        .err()
        .or_else(|| run.heal_and_check(&chosen));
    let sim_ms = run.sim.elapsed().as_millis() as u64;
    Outcome {
        seed: opts.seed,
        ops: opts.ops,
        injected: chosen,
        sim_ms,
        real_ms: started.elapsed().as_millis() as u64,
        failure,
        coverage: run.coverage,
        wiped: run.wiped_for.len(),
        trace: run.trace,
    }
}

impl Run<'_> {
    fn note(&mut self, line: String) {
        let t = self.sim.elapsed().as_millis();
        self.trace.push(format!("{t:>7} {line}"));
    }

    fn step(&mut self, ticks: u32) -> Result<(), check::Failure> {
        for _ in 0..ticks {
            self.sim.step().map_err(|e| {
                check::Failure::new("crash", format!("a node's software failed: {e}"))
            })?;
            clock::set_now(self.sim.since_epoch());
        }
        Ok(())
    }

    fn up(&self) -> Vec<usize> {
        (0..self.nodes)
            .filter(|s| cluster::is_up(&self.reg, *s))
            .collect()
    }

    /// The safety phase: the workload with faults coming and going.
    fn drive(&mut self, opts: &Options, chosen: &[FaultKind]) -> Result<(), check::Failure> {
        // Let the mesh form before the first fault.
        self.step(1_000)?;
        let mut schedule: BTreeMap<usize, Vec<FaultKind>> = BTreeMap::new();
        for kind in chosen {
            if matches!(
                kind,
                FaultKind::Partition
                    | FaultKind::Partial
                    | FaultKind::Asymmetric
                    | FaultKind::Crash
                    | FaultKind::Jump
                    | FaultKind::Remove
                    | FaultKind::Restore
            ) {
                for _ in 0..self.rng.random_range(1..=2) {
                    let at = self.rng.random_range(0..opts.ops.max(1));
                    schedule.entry(at).or_default().push(*kind);
                }
            }
        }
        let mut lift_at: BTreeMap<usize, Vec<Active>> = BTreeMap::new();
        for op in 0..opts.ops {
            for active in lift_at.remove(&op).unwrap_or_default() {
                if let Some(next) = self.lift(active) {
                    let lasts = self.rng.random_range(20..=150);
                    lift_at.entry(op + lasts).or_default().push(next);
                }
            }
            for kind in schedule.remove(&op).unwrap_or_default() {
                if let Some(active) = self.inject(kind) {
                    let lasts = self.rng.random_range(20..=150);
                    lift_at.entry(op + lasts).or_default().push(active);
                }
            }
            self.one_op(op)?;
            let pause = self.rng.random_range(0..=30);
            self.step(pause)?;
            self.wipe_refused();
        }
        let mut rest: std::collections::VecDeque<Active> =
            lift_at.into_values().flatten().collect();
        while let Some(active) = rest.pop_front() {
            rest.extend(self.lift(active));
        }
        Ok(())
    }

    fn name(slot: usize) -> String {
        cluster::host_name(slot)
    }

    fn inject(&mut self, kind: FaultKind) -> Option<Active> {
        let n = self.nodes;
        let active = match kind {
            FaultKind::Partition => {
                let mut side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                    side[0] = !side[0];
                }
                let pairs: Vec<(usize, usize)> = (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| a < b && side[a] != side[b])
                    .collect();
                for &(a, b) in &pairs {
                    self.sim.partition(Self::name(a), Self::name(b));
                }
                Active::Cut(pairs)
            }
            FaultKind::Partial => {
                let a = self.rng.random_range(0..n);
                let b = (a + self.rng.random_range(1..n)) % n;
                self.sim.partition(Self::name(a), Self::name(b));
                Active::Cut(vec![(a, b)])
            }
            FaultKind::Asymmetric => {
                let a = self.rng.random_range(0..n);
                let b = (a + self.rng.random_range(1..n)) % n;
                self.sim.partition_oneway(Self::name(a), Self::name(b));
                Active::OneWay(a, b)
            }
            FaultKind::Crash => {
                let up = self.up();
                if up.len() < 2 {
                    return None;
                }
                let victim = up[self.rng.random_range(0..up.len())];
                self.sim.crash(Self::name(victim));
                if let Some((life, kept)) = cluster::crashed(&self.reg, victim) {
                    self.note(format!(
                        "crash n{victim} {life:?}: store holds its writes to #{kept}"
                    ));
                }
                Active::Down(victim)
            }
            FaultKind::Jump => {
                let slot = self.rng.random_range(0..n);
                let ahead = self.rng.random_range(60_000i64..=600_000);
                clock::set_skew_ms(slot, clock::skew_ms(slot) + ahead);
                self.note(format!("fault jump n{slot} +{ahead}ms"));
                return None;
            }
            FaultKind::Remove => {
                let up = self.up();
                if up.len() < 2 {
                    return None;
                }
                // A member that went away is removed from the others'
                // meshes; it comes back later with what its store kept (or
                // empty), and is added back.
                let member = up[self.rng.random_range(0..up.len())];
                for other in 0..n {
                    if other != member {
                        self.unlink(other, member);
                    }
                }
                self.sim.crash(Self::name(member));
                if let Some((life, kept)) = cluster::crashed(&self.reg, member) {
                    self.note(format!(
                        "removed n{member} {life:?}: store holds its writes to #{kept}"
                    ));
                }
                Active::Removed(member)
            }
            FaultKind::Restore => {
                let stored: Vec<usize> = self
                    .up()
                    .into_iter()
                    .filter(|s| cluster::store(&self.reg, *s).is_some())
                    .collect();
                if stored.is_empty() {
                    return None;
                }
                let slot = stored[self.rng.random_range(0..stored.len())];
                let store = cluster::store(&self.reg, slot)?;
                Active::Restore(slot, Backup(Arc::new(store.backup())))
            }
            FaultKind::Loss
            | FaultKind::Delay
            | FaultKind::Skew
            | FaultKind::Join
            | FaultKind::Large => return None,
        };
        self.note(format!("fault {kind} {active:?}"));
        Some(active)
    }

    /// Ends `active`; a fault with a second phase returns it (it ends
    /// 20-150 operations later, or with the rest).
    fn lift(&mut self, active: Active) -> Option<Active> {
        self.note(format!("heal {active:?}"));
        match active {
            Active::Cut(pairs) => {
                for (a, b) in pairs {
                    self.sim.repair(Self::name(a), Self::name(b));
                }
            }
            Active::OneWay(a, b) => self.sim.repair_oneway(Self::name(a), Self::name(b)),
            Active::Down(slot) => self.sim.bounce(Self::name(slot)),
            Active::Restore(slot, backup) => {
                // Only a node that is up: one that is down or removed comes
                // back by its own fault's end. It stays down a while, as a
                // restore takes time: long enough for the others to collect
                // what it had applied since the copy.
                if cluster::is_up(&self.reg, slot) {
                    self.sim.crash(Self::name(slot));
                    cluster::restored(&self.reg, slot, backup.0);
                    self.note(format!("n{slot} goes down to be restored from the backup"));
                    return Some(Active::Down(slot));
                }
            }
            Active::Removed(member) => {
                self.sim.bounce(Self::name(member));
                for other in 0..self.nodes {
                    if other != member {
                        self.link(other, member);
                    }
                }
            }
        }
        None
    }

    /// What an operator does for a node refused for holding writes of a
    /// member removed past its grace, without the deletes collected since:
    /// restarts it with an empty store. Those writes, and its own that no
    /// other node received, are lost, knowingly (docs/operations.md,
    /// "Removing a member").
    fn wipe_refused(&mut self) {
        let mut refused = BTreeSet::new();
        for slot in self.up() {
            if let Some((node, _)) = cluster::node(&self.reg, slot) {
                if let Some(repl) = &node.repl {
                    refused.extend(repl.refused_nodes());
                }
            }
        }
        refused.retain(|life| !self.wiped_for.contains(life));
        if refused.is_empty() {
            return;
        }
        for slot in self.up() {
            let Some((_, life)) = cluster::node(&self.reg, slot) else {
                continue;
            };
            if !refused.contains(&life) {
                continue;
            }
            self.wiped_for.insert(life);
            self.sim.crash(Self::name(slot));
            cluster::wiped(&self.reg, slot);
            self.sim.bounce(Self::name(slot));
            self.note(format!(
                "n{slot} wiped and restarted: {life:?} refused for a removed member's writes"
            ));
        }
    }

    fn repl_addr(&self, slot: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.sim.lookup(Self::name(slot)), cluster::REPL_PORT)
    }

    /// REPLICAOF REMOVE on `slot` for `peer` (nothing if `slot` is down: it
    /// restarts with its configured peers, the removed one among them).
    fn unlink(&mut self, slot: usize, peer: usize) {
        if let Some((node, _)) = cluster::node(&self.reg, slot) {
            if let Some(repl) = &node.repl {
                repl.remove_peers(Some(self.repl_addr(peer)));
            }
        }
    }

    /// REPLICAOF on `slot` for `peer`.
    fn link(&mut self, slot: usize, peer: usize) {
        if let Some((node, _)) = cluster::node(&self.reg, slot) {
            if let Some(repl) = &node.repl {
                let _ = repl.add_peer(self.repl_addr(peer));
            }
        }
    }

    /// One random command on a random node that is up, recorded.
    fn one_op(&mut self, op: usize) -> Result<(), check::Failure> {
        let up = self.up();
        if up.is_empty() {
            return Ok(());
        }
        let slot = up[self.rng.random_range(0..up.len())];
        let roll = self.rng.random_range(0..1000);
        let value = format!("v{op}");
        let (args, kinds): (Vec<String>, Vec<(String, WriteKind)>) = match roll {
            // Counters: only increments, and the rare FLUSHALL below.
            0..300 => {
                let key = format!("c{}", self.rng.random_range(0..4));
                let by = self.rng.random_range(-5i64..=10);
                (
                    vec!["INCRBY".into(), key.clone(), by.to_string()],
                    vec![(key, WriteKind::Incr(by))],
                )
            }
            // Registers: SET, DEL, MSET, GET.
            300..500 => {
                let key = format!("r{}", self.rng.random_range(0..8));
                let value = if self.large && self.rng.random_range(0..100) < 3 {
                    // Past one replication fragment (1 MiB).
                    let len = self.rng.random_range(1_100_000..2_600_000);
                    format!("{value}:{}", "L".repeat(len))
                } else {
                    value.clone()
                };
                (
                    vec!["SET".into(), key.clone(), value.clone()],
                    vec![(key, WriteKind::Set(value))],
                )
            }
            500..560 => {
                let key = format!("r{}", self.rng.random_range(0..8));
                (vec!["DEL".into(), key.clone()], vec![(key, WriteKind::Del)])
            }
            560..600 => {
                let a = self.rng.random_range(0..8);
                let b = (a + self.rng.random_range(1..8)) % 8;
                let (ka, kb) = (format!("r{a}"), format!("r{b}"));
                let vb = format!("{value}b");
                (
                    vec![
                        "MSET".into(),
                        ka.clone(),
                        value.clone(),
                        kb.clone(),
                        vb.clone(),
                    ],
                    vec![
                        (ka, WriteKind::Set(value.clone())),
                        (kb, WriteKind::Set(vb)),
                    ],
                )
            }
            600..650 => {
                let key = format!("r{}", self.rng.random_range(0..8));
                (vec!["GET".into(), key], Vec::new())
            }
            // SWAPDB has no meaning across nodes (each would swap under the
            // others' writes): a replicating node must refuse it (#11 item 8).
            650..655 => {
                let argv: [&[u8]; 3] = [b"SWAPDB", b"0", b"1"];
                let Some(reply) = cluster::command(&self.reg, slot, &argv) else {
                    return Ok(());
                };
                let reply = String::from_utf8_lossy(&reply).trim_end().to_string();
                self.note(format!("n{slot} SWAPDB 0 1 -> {reply}"));
                if !reply.starts_with('-') {
                    return Err(check::Failure::new(
                        "swapdb",
                        format!("n{slot} swapped databases while replicating: {reply}"),
                    ));
                }
                return Ok(());
            }
            // Session keys: each created once and, maybe, deleted once, as a
            // session store's are. A deleted one stays deleted, so one that
            // comes back (a stale copy, a late write merged after its
            // tombstone was collected) shows.
            655..685 => {
                let key = format!("rs{}", self.sessions);
                self.sessions += 1;
                (
                    vec!["SET".into(), key.clone(), value.clone()],
                    vec![(key, WriteKind::Set(value))],
                )
            }
            685..715 => {
                if self.sessions == 0 {
                    return Ok(());
                }
                let key = format!("rs{}", self.rng.random_range(0..self.sessions));
                (vec!["DEL".into(), key.clone()], vec![(key, WriteKind::Del)])
            }
            // Counter fields: only increments, as the counters above; each
            // (hash, field) is checked like a counter key ("f:hash:field").
            // Sorted-set members only ZINCRBY touches: checked the same way
            // ("g:zset:member", read with ZSCORE).
            745..765 => {
                let (z, m) = (self.rng.random_range(0..2), self.rng.random_range(0..3));
                let by = self.rng.random_range(-5i64..=10);
                let (key, member) = (format!("zc{z}"), format!("n{m}"));
                (
                    vec![
                        "ZINCRBY".into(),
                        key.clone(),
                        by.to_string(),
                        member.clone(),
                    ],
                    vec![(format!("g:{key}:{member}"), WriteKind::Incr(by))],
                )
            }
            715..745 => {
                let (h, f) = (self.rng.random_range(0..2), self.rng.random_range(0..3));
                let by = self.rng.random_range(-5i64..=10);
                let (key, field) = (format!("hc{h}"), format!("n{f}"));
                (
                    vec!["HINCRBY".into(), key.clone(), field.clone(), by.to_string()],
                    vec![(format!("f:{key}:{field}"), WriteKind::Incr(by))],
                )
            }
            // Hashes and sets in every form, a SET over one now and then (a
            // type clash): checked for convergence.
            // Sorted sets in every form, clashing with sets and strings.
            830..855 => {
                let n = self.rng.random_range(0..3);
                let z = format!("z{n}");
                let member = format!("m{}", self.rng.random_range(0..6));
                let score = self.rng.random_range(-3i64..=3).to_string();
                let args: Vec<String> = match self.rng.random_range(0..16) {
                    0..5 => vec!["ZADD".into(), z, score, member],
                    5..7 => vec![
                        "ZADD".into(),
                        z,
                        "GT".into(),
                        score,
                        member,
                        "1".into(),
                        "m9".into(),
                    ],
                    7..10 => vec!["ZINCRBY".into(), z, score, member],
                    10..12 => vec!["ZREM".into(), z, member],
                    12 => vec!["ZPOPMIN".into(), z],
                    13 => vec!["ZREMRANGEBYSCORE".into(), z, "-1".into(), "1".into()],
                    14 => vec!["DEL".into(), z],
                    _ => vec!["SADD".into(), z, member],
                };
                (args, Vec::new())
            }
            765..830 => {
                let n = self.rng.random_range(0..4);
                let (h, s) = (format!("h{n}"), format!("s{n}"));
                let field = format!("f{}", self.rng.random_range(0..4));
                let member = format!("m{}", self.rng.random_range(0..6));
                let args: Vec<String> = match self.rng.random_range(0..20) {
                    0..4 => vec!["HSET".into(), h, field, value.clone()],
                    4..6 => vec![
                        "HSET".into(),
                        h,
                        field,
                        "1".into(),
                        "f9".into(),
                        value.clone(),
                    ],
                    6..8 => vec!["HDEL".into(), h, field],
                    8..10 => vec!["HINCRBY".into(), h, field, "2".into()],
                    // Recorded: a member removed after every add of it
                    // was seen must stay removed (check::removals).
                    r @ 10..16 => {
                        let (command, kind) = if r < 14 {
                            ("SADD", WriteKind::Add)
                        } else {
                            ("SREM", WriteKind::Remove)
                        };
                        let element = format!("e:{s}:{member}");
                        return self.record(
                            slot,
                            &[command.into(), s, member],
                            vec![(element, kind)],
                        );
                    }
                    16 => vec!["SPOP".into(), s],
                    17 => vec!["DEL".into(), if n % 2 == 0 { h } else { s }],
                    18 => vec!["SET".into(), if n % 2 == 0 { h } else { s }, value.clone()],
                    _ => vec!["SADD".into(), h, member],
                };
                (args, Vec::new())
            }
            // Lists fed at both ends and popped ("q"): each pushed value
            // names its node's life, its end and a number that only grows,
            // so the checker can tell a value twice, one never pushed, and
            // a node's pushes out of the order it made them in.
            855..885 => {
                let key = format!("q{}", self.rng.random_range(0..3));
                let life = cluster::node(&self.reg, slot).map_or(0, |(_, n)| n.0);
                let args: Vec<String> = match self.rng.random_range(0..12) {
                    0..4 => vec!["RPUSH".into(), key, format!("p{life}.R.{op}")],
                    4..7 => vec!["LPUSH".into(), key, format!("p{life}.L.{op}")],
                    7 => vec!["LPOP".into(), key],
                    8 => vec!["RPOP".into(), key],
                    9..11 => vec!["LTRIM".into(), key, "0".into(), "9".into()],
                    _ => vec!["LRANGE".into(), key, "0".into(), "-1".into()],
                };
                (args, Vec::new())
            }
            // Lists in every form, clashing with sets and strings: checked
            // for convergence.
            885..905 => {
                let key = format!("l{}", self.rng.random_range(0..2));
                let index = self.rng.random_range(-3i64..3).to_string();
                let args: Vec<String> = match self.rng.random_range(0..15) {
                    0..3 => vec!["RPUSH".into(), key, value.clone(), "a".into()],
                    3..5 => vec!["LPUSH".into(), key, value.clone()],
                    5..7 => vec!["LSET".into(), key, index, value.clone()],
                    7 => vec![
                        "LINSERT".into(),
                        key,
                        "BEFORE".into(),
                        "a".into(),
                        value.clone(),
                    ],
                    8 => vec!["LREM".into(), key, "0".into(), "a".into()],
                    9 => vec!["LTRIM".into(), key, "1".into(), "-1".into()],
                    10 => vec!["RPOP".into(), key, "2".into()],
                    11 => vec![
                        "LMOVE".into(),
                        key,
                        format!("l{}", self.rng.random_range(0..2)),
                        "RIGHT".into(),
                        "LEFT".into(),
                    ],
                    12 => vec!["DEL".into(), key],
                    13 => vec!["SET".into(), key, value.clone()],
                    _ => vec!["SADD".into(), key, value.clone()],
                };
                (args, Vec::new())
            }
            // Volatile keys: expiry in all its forms; checked for convergence.
            905..995 => {
                let key = format!("x{}", self.rng.random_range(0..4));
                let args = match self.rng.random_range(0..7) {
                    6 => vec![
                        "EXPIRE".into(),
                        key.clone(),
                        self.rng.random_range(1..3).to_string(),
                    ],
                    0 => vec![
                        "SET".into(),
                        key.clone(),
                        value.clone(),
                        "PX".into(),
                        self.rng.random_range(50..3_000).to_string(),
                    ],
                    1 => vec![
                        "PEXPIRE".into(),
                        key.clone(),
                        self.rng.random_range(50..3_000).to_string(),
                    ],
                    2 => vec!["INCRBY".into(), key.clone(), "3".into()],
                    3 => vec!["DEL".into(), key.clone()],
                    4 => vec!["PERSIST".into(), key.clone()],
                    _ => vec!["GET".into(), key.clone()],
                };
                (args, Vec::new())
            }
            _ => {
                if self.history.flushes >= 2 {
                    return Ok(());
                }
                self.history.flushes += 1;
                (
                    vec!["FLUSHALL".into()],
                    vec![(String::new(), WriteKind::Flush)],
                )
            }
        };
        self.record(slot, &args, kinds)
    }

    fn record(
        &mut self,
        slot: usize,
        args: &[String],
        kinds: Vec<(String, WriteKind)>,
    ) -> Result<(), check::Failure> {
        let Some((shared, node)) = cluster::node(&self.reg, slot) else {
            return Ok(());
        };
        let repl = shared.repl.clone().expect("sim nodes replicate");
        let before = repl.head_seq();
        let mut observed: BTreeMap<NodeId, u64> = repl.applied_vv().into_iter().collect();
        observed.insert(node, before);
        // What each key's register held here before: the write replaces it
        // knowingly, even when it arrived in a state transfer that no vector
        // counts yet.
        let replaced: Vec<Option<chorus_crdt::Stamp>> = kinds
            .iter()
            .map(|(key, _)| {
                (!key.is_empty())
                    .then(|| shared.ks.state_of(0, key.as_bytes()))
                    .flatten()
                    .map(|s| s.reg.stamp)
                    .filter(|s| !s.is_zero())
            })
            .collect();
        let argv: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let Some(reply) = cluster::command(&self.reg, slot, &argv) else {
            return Ok(());
        };
        let after = repl.head_seq();
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.len() > 64 {
                    format!("{}..({} bytes)", &a[..16], a.len())
                } else {
                    a.clone()
                }
            })
            .collect();
        let line = format!(
            "n{slot} {} -> {}",
            shown.join(" "),
            String::from_utf8_lossy(&reply)
                .trim_end()
                .replace("\r\n", " ")
        );
        self.note(line);
        let elements = kinds
            .iter()
            .all(|(_, k)| matches!(k, WriteKind::Add | WriteKind::Remove));
        if reply.starts_with(b"-") && !kinds.is_empty() && elements {
            // A set's member op on a key another type holds (WRONGTYPE):
            // nothing written, nothing to remember.
            return Ok(());
        }
        if reply.starts_with(b"-") && !kinds.is_empty() {
            return Err(check::Failure::new(
                "crash",
                format!(
                    "n{slot} refused {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&reply)
                ),
            ));
        }
        // The op's own deltas are the last ones it published, in key order
        // (one before each may be the delete of an expired key).
        let published = after - before;
        let keyed = kinds.len() as u64;
        if published < keyed {
            // Nothing written (DEL of a missing key): nothing to remember.
            return Ok(());
        }
        for (i, (key, kind)) in kinds.into_iter().enumerate() {
            let seq = after - keyed + 1 + i as u64;
            // A counter field's pseudo-key "f:hash:field", or a counter
            // member's "g:zset:member".
            let is_member = key.starts_with("g:");
            let field = key
                .strip_prefix("f:")
                .or_else(|| key.strip_prefix("g:"))
                .and_then(|k| k.split_once(':'))
                .map(|(k, f)| (k.to_string(), f.to_string()));
            let state = match &field {
                Some((k, _)) => shared.ks.state_of(0, k.as_bytes()),
                None => (!key.is_empty())
                    .then(|| shared.ks.state_of(0, key.as_bytes()))
                    .flatten(),
            };
            let (stamp, epoch) = match (&kind, &state) {
                (WriteKind::Flush, _) => (Some(shared.ks.dump().1[0]), None),
                (WriteKind::Incr(_), Some(s)) if field.is_some() => (
                    None,
                    field.as_ref().and_then(|(_, f)| {
                        let c = s.coll()?;
                        let counts = if is_member {
                            c.zset_named(f.as_bytes())?.counts.as_ref()?
                        } else {
                            c.field_counts(f.as_bytes())?
                        };
                        counts.get(&node).map(|t| t.epoch)
                    }),
                ),
                (WriteKind::Incr(_), Some(s)) => (
                    None,
                    s.extras
                        .as_ref()
                        .and_then(|x| x.counts.get(&node))
                        .map(|t| t.epoch),
                ),
                // The write's own stamp, if it won here (a peer's write
                // stamped ahead beyond the drift limit can beat it at once).
                (_, Some(s)) if s.reg.stamp.node == node => (Some(s.reg.stamp), None),
                _ => (None, None),
            };
            self.history.writes.push(Write {
                origin: node,
                seq,
                key,
                kind,
                stamp,
                epoch,
                observed: observed.clone(),
                replaced: replaced[i],
            });
        }
        Ok(())
    }

    /// The liveness phase: lift every fault, restart every node, and require
    /// identical state within a bounded simulated time; then the checks.
    fn heal_and_check(&mut self, chosen: &[FaultKind]) -> Option<check::Failure> {
        for a in 0..self.nodes {
            for b in 0..self.nodes {
                if a != b {
                    self.sim.repair(Self::name(a), Self::name(b));
                }
            }
        }
        if chosen.contains(&FaultKind::Loss) {
            self.sim.set_fail_rate(0.0);
            for a in 0..self.nodes {
                for b in 0..self.nodes {
                    if a != b {
                        self.sim.repair(Self::name(a), Self::name(b));
                    }
                }
            }
        }
        self.note("heal all".into());
        let deadline = self.sim.elapsed() + LIVENESS_LIMIT;
        let mut last: Option<String>;
        loop {
            if let Err(f) = self.step(100) {
                return Some(f);
            }
            self.wipe_refused();
            let snapshot = check::Snapshot::take(&self.reg, self.nodes);
            match snapshot.converged() {
                Ok(()) => {
                    for line in snapshot.digests() {
                        self.note(line);
                    }
                    return check::invariants(
                        &self.reg,
                        &snapshot,
                        &self.history,
                        chosen,
                        &mut self.coverage,
                    );
                }
                Err(why) => last = Some(why),
            }
            if self.sim.elapsed() > deadline {
                // What each node's links say, for the trace.
                for slot in 0..self.nodes {
                    if let Some(reply) =
                        cluster::command(&self.reg, slot, &[b"INFO", b"replication"])
                    {
                        let text = String::from_utf8_lossy(&reply).into_owned();
                        for line in text.lines().filter(|l| l.starts_with("peer")) {
                            self.note(format!("n{slot} {line}"));
                        }
                    }
                }
                return Some(check::Failure::new(
                    "liveness",
                    format!(
                        "no convergence {}s after healing: {}",
                        LIVENESS_LIMIT.as_secs(),
                        last.unwrap_or_default()
                    ),
                ));
            }
        }
    }
}
