use std::time::Duration;

use chorus_sim::{clock, cluster};

fn step_for(sim: &mut turmoil::Sim<'_>, d: Duration) {
    let end = sim.elapsed() + d;
    while sim.elapsed() < end {
        sim.step().unwrap();
        clock::set_now(sim.since_epoch());
    }
}

/// Two simulated nodes linked to each other, up and meshed.
fn two_nodes(seed: u64, stores: [bool; 2]) -> (turmoil::Sim<'static>, cluster::Registry) {
    clock::reset();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .udp_capacity(4096)
        .rng_seed(seed)
        .build();
    let reg = cluster::registry(&stores);
    for slot in 0..2 {
        let peers = vec![cluster::host_name(1 - slot)];
        cluster::add_node(&mut sim, &reg, seed, slot, peers, Duration::ZERO);
    }
    step_for(&mut sim, Duration::from_secs(2));
    (sim, reg)
}

#[test]
fn three_nodes_replicate_over_simulated_quic() {
    clock::reset();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .udp_capacity(4096)
        .rng_seed(7)
        .build();
    let reg = cluster::registry(&[false; 3]);
    for slot in 0..3 {
        let peers = (0..3)
            .filter(|p| *p != slot)
            .map(cluster::host_name)
            .collect();
        cluster::add_node(&mut sim, &reg, 7, slot, peers, Duration::ZERO);
    }
    step_for(&mut sim, Duration::from_secs(2));
    assert!((0..3).all(|s| cluster::is_up(&reg, s)));
    let reply = cluster::command(&reg, 0, &[b"SET", b"k", b"v"]).unwrap();
    assert_eq!(reply, b"+OK\r\n");
    cluster::command(&reg, 1, &[b"INCRBY", b"c", b"5"]).unwrap();
    step_for(&mut sim, Duration::from_secs(2));
    assert_eq!(
        cluster::command(&reg, 2, &[b"GET", b"k"]).unwrap(),
        b"$1\r\nv\r\n"
    );
    assert_eq!(
        cluster::command(&reg, 0, &[b"GET", b"c"]).unwrap(),
        b"$1\r\n5\r\n"
    );
}

#[test]
fn a_few_seeds_without_faults_pass() {
    for seed in 0..3 {
        let out = chorus_sim::run::run(&chorus_sim::run::Options {
            seed,
            nodes: 3,
            ops: 200,
            faults: vec![],
        });
        eprintln!(
            "seed {seed}: sim {} ms, real {} ms, {:?}",
            out.sim_ms, out.real_ms, out.failure
        );
        assert!(out.failure.is_none(), "seed {seed}: {:?}", out.failure);
    }
}

/// A node with a store comes back from a crash with what its last cut held
/// (even cut off from its peers, so it is not them refilling it), without
/// the write made after that cut, and the cluster converges once healed.
#[test]
fn a_crashed_node_restarts_from_its_store() {
    let (mut sim, reg) = two_nodes(11, [true, false]);
    sim.partition("n0", "n1");
    let run = |reg: &cluster::Registry, slot, args: &[&[u8]]| {
        String::from_utf8(cluster::command(reg, slot, args).unwrap()).unwrap()
    };
    assert_eq!(run(&reg, 0, &[b"SET", b"kept", b"1"]), "+OK\r\n");
    assert_eq!(run(&reg, 0, &[b"INCRBY", b"count", b"7"]), ":7\r\n");
    step_for(&mut sim, Duration::from_millis(1_500));
    let store = reg.borrow()[0].store.clone().unwrap();
    assert!(
        store.cuts() > 0 && store.len() == 2,
        "a cut stored both keys"
    );
    // After the last cut: lost with the crash (no peer could receive it).
    assert_eq!(run(&reg, 0, &[b"SET", b"lost", b"1"]), "+OK\r\n");
    sim.crash("n0");
    cluster::crashed(&reg, 0);
    sim.bounce("n0");
    step_for(&mut sim, Duration::from_secs(1));
    assert!(cluster::is_up(&reg, 0));
    assert_eq!(run(&reg, 0, &[b"GET", b"kept"]), "$1\r\n1\r\n");
    assert_eq!(run(&reg, 0, &[b"INCRBY", b"count", b"1"]), ":8\r\n");
    assert_eq!(run(&reg, 0, &[b"GET", b"lost"]), "$-1\r\n");
    sim.repair("n0", "n1");
    step_for(&mut sim, Duration::from_secs(12));
    assert_eq!(run(&reg, 1, &[b"GET", b"kept"]), "$1\r\n1\r\n");
    assert_eq!(run(&reg, 1, &[b"GET", b"count"]), "$1\r\n8\r\n");
}

/// A node without a store restarts empty and refills from its peer.
#[test]
fn a_crashed_in_memory_node_refills_from_its_peer() {
    let (mut sim, reg) = two_nodes(12, [false, false]);
    cluster::command(&reg, 0, &[b"SET", b"k", b"v"]).unwrap();
    step_for(&mut sim, Duration::from_secs(2));
    sim.partition("n0", "n1");
    sim.crash("n0");
    cluster::crashed(&reg, 0);
    sim.bounce("n0");
    step_for(&mut sim, Duration::from_secs(1));
    assert_eq!(
        cluster::command(&reg, 0, &[b"GET", b"k"]).unwrap(),
        b"$-1\r\n",
        "nothing kept across the crash"
    );
    sim.repair("n0", "n1");
    // Reconnecting may wait out a backoff of up to 5 s.
    step_for(&mut sim, Duration::from_secs(12));
    assert_eq!(
        cluster::command(&reg, 0, &[b"GET", b"k"]).unwrap(),
        b"$1\r\nv\r\n"
    );
}

/// The race a store opens: a node applies a delete, crashes before storing
/// it, and its peer, believing it has the delete, forgets the tombstone and
/// trims its backlog. Restarted from its store, the node still holds the
/// old value; unless what it reported stable waited for its cuts, nothing
/// would ever delete it again (the KeyDB failure this product replaces).
#[test]
fn a_restarted_node_never_brings_back_a_key_deleted_before_its_crash() {
    let (mut sim, reg) = two_nodes(13, [true, false]);
    cluster::command(&reg, 1, &[b"SET", b"doomed", b"old"]).unwrap();
    let store = reg.borrow()[0].store.clone().unwrap();
    // Delete just after n0 stored the old value, so the delete misses a cut.
    let cuts = store.cuts();
    while store.cuts() == cuts || store.is_empty() {
        sim.step().unwrap();
        clock::set_now(sim.since_epoch());
    }
    cluster::command(&reg, 1, &[b"DEL", b"doomed"]).unwrap();
    step_for(&mut sim, Duration::from_millis(700));
    sim.crash("n0");
    cluster::crashed(&reg, 0);
    // n1 sweeps its tombstones and outgrows its backlog while n0 is down.
    let filler = vec![b'x'; 1_000];
    for i in 0..100 {
        let key = format!("filler{i}");
        cluster::command(&reg, 1, &[b"SET", key.as_bytes(), &filler]).unwrap();
    }
    step_for(&mut sim, Duration::from_secs(8));
    sim.bounce("n0");
    step_for(&mut sim, Duration::from_secs(15));
    for slot in 0..2 {
        assert_eq!(
            cluster::command(&reg, slot, &[b"EXISTS", b"doomed"]).unwrap(),
            b":0\r\n",
            "n{slot}: the deleted key came back"
        );
    }
    assert_eq!(
        cluster::command(&reg, 0, &[b"DBSIZE"]).unwrap(),
        b":100\r\n"
    );
}
