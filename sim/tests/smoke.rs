use std::time::Duration;

use chorus_sim::{clock, cluster};

fn step_for(sim: &mut turmoil::Sim<'_>, d: Duration) {
    let end = sim.elapsed() + d;
    while sim.elapsed() < end {
        sim.step().unwrap();
        clock::set_now(sim.since_epoch());
    }
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
    let reg = cluster::registry(3);
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
