//! The simulated cluster: each node is a turmoil host running the real
//! node code (keyspace, replication, QUIC transport) over simulated UDP.
//! Commands run through the server's real dispatcher, in process.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use chorus::cmd::dispatch;
use chorus::node::{Links, Node};
use chorus::resp::Reply;
use chorus::server::Server;
use chorus::session::Session;
use chorus::store::MemStore;
use chorus::{Config, NodeEnv};
use chorus_crdt::NodeId;
use chorus_transport::{Transport, TransportConfig};

use crate::clock;
use crate::net::SimUdp;

/// The UDP port every simulated node replicates on.
pub const REPL_PORT: u16 = 16379;
const SECRET: &[u8] = b"sim-secret";

/// One node slot: a host that may crash and restart (each start is a new
/// incarnation with a new node id). A slot with a store restarts from what
/// its last cut kept; one without restarts empty, as an in-memory node.
pub struct Slot {
    pub name: String,
    /// The slot's disk: it outlives every incarnation.
    pub store: Option<Arc<MemStore>>,
    /// Every crashed incarnation and how many of its own writes its store
    /// held when it crashed: those must survive.
    pub crashed: Vec<(NodeId, u64)>,
    /// Starts so far (the current incarnation is `starts - 1`).
    pub starts: u32,
    pub node: Option<NodeId>,
    /// Weak: the host's own task owns the node, so a crash drops it inside
    /// the host (where turmoil releases its sockets).
    shared: std::sync::Weak<Server>,
    client: Option<Session>,
}

pub type Registry = Rc<RefCell<Vec<Slot>>>;

/// Which slots of a run keep a store: drawn from the seed (without
/// touching the workload's random stream), about half of them.
pub fn stores_for(seed: u64, nodes: usize) -> Vec<bool> {
    (0..nodes)
        .map(|i| {
            let mixed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (i as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03);
            (splitmix(mixed) >> 40) & 1 == 1
        })
        .collect()
}

/// One slot per entry of `stores`, with a store where it says `true`.
pub fn registry(stores: &[bool]) -> Registry {
    Rc::new(RefCell::new(
        stores
            .iter()
            .enumerate()
            .map(|(i, stored)| Slot {
                name: host_name(i),
                store: stored.then(|| Arc::new(MemStore::new())),
                crashed: Vec::new(),
                starts: 0,
                node: None,
                shared: std::sync::Weak::new(),
                client: None,
            })
            .collect(),
    ))
}

pub fn host_name(slot: usize) -> String {
    format!("n{slot}")
}

/// The node id of `slot`'s `incarnation`th start: derived from the seed.
pub fn node_id(seed: u64, slot: usize, incarnation: u32) -> NodeId {
    let mut x = seed ^ ((slot as u64 + 1) << 40) ^ u64::from(incarnation).rotate_left(20);
    loop {
        x = splitmix(x);
        if let Some(id) = NodeId::new(x) {
            return id;
        }
    }
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Registers node `slot` as a host. `peers` are the other nodes' host names
/// (full mesh). The first start waits `join_after` (a node joining late).
pub fn add_node(
    sim: &mut turmoil::Sim<'_>,
    reg: &Registry,
    seed: u64,
    slot: usize,
    peers: Vec<String>,
    join_after: std::time::Duration,
) {
    let name = host_name(slot);
    let reg = reg.clone();
    sim.host(name.as_str(), move || {
        let reg = reg.clone();
        let peers = peers.clone();
        async move {
            let incarnation = {
                let mut r = reg.borrow_mut();
                r[slot].starts += 1;
                r[slot].starts - 1
            };
            if incarnation == 0 && !join_after.is_zero() {
                tokio::time::sleep(join_after).await;
            }
            let node = node_id(seed, slot, incarnation);
            let store = reg.borrow()[slot].store.clone();
            let shared = start_node(seed, slot, node, &peers, store)
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })?;
            {
                let mut r = reg.borrow_mut();
                r[slot].client = Some(Session::embedded(&shared.clients));
                r[slot].node = Some(node);
                r[slot].shared = Arc::downgrade(&shared);
            }
            std::future::pending::<()>().await;
            drop(shared);
            Ok(())
        }
    });
}

async fn start_node(
    seed: u64,
    slot: usize,
    node: NodeId,
    peers: &[String],
    store: Option<Arc<MemStore>>,
) -> anyhow::Result<Arc<Server>> {
    let repair = if REPAIR_OFF.with(Cell::get) {
        "0"
    } else {
        "30"
    };
    let grace = REMOVED_GRACE_SECS.with(Cell::get).to_string();
    let args: Vec<String> = [
        "--active-replica",
        "yes",
        "--masterauth",
        "sim-secret",
        "--cluster-name",
        "sim",
        // Small, so that short outages outgrow it and force state transfers.
        "--repl-backlog-size",
        "32kb",
        "--repl-repair-interval",
        repair,
        "--removed-peer-grace",
        &grace,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let config = Config::load(None, &args)?;
    let shared = Node::open(
        config,
        NodeEnv {
            node,
            physical: clock::physical_clock(slot),
            wall_ms: clock::wall_clock(slot),
            hash_seed: Some(splitmix(seed ^ slot as u64)),
            store: store.map(|s| s as Arc<dyn chorus::store::Store>),
            log_dir: None,
        },
    )?;
    let socket = SimUdp::bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        REPL_PORT,
    ))
    .await?;
    let mut endpoint = quinn::EndpointConfig::default();
    let mut rng_seed = [0u8; 32];
    for (i, chunk) in rng_seed.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix(node.0 ^ i as u64).to_le_bytes());
    }
    endpoint.rng_seed(Some(rng_seed));
    let transport = Transport::with_socket(
        Arc::new(socket),
        Arc::new(quinn::TokioRuntime),
        endpoint,
        TransportConfig::new(node.0, "sim", SECRET),
    )?;
    let peers = peers
        .iter()
        .map(|p| SocketAddr::new(turmoil::lookup(p.as_str()), REPL_PORT))
        .collect();
    shared.start(
        Links::Over(Box::new(transport), peers),
        chorus::persist::CutThread::Inline,
    )?;
    Ok(Server::new(shared))
}

/// The store of `slot`, if it keeps one.
pub fn store(reg: &Registry, slot: usize) -> Option<Arc<MemStore>> {
    reg.borrow()[slot].store.clone()
}

/// Marks `slot` down (its host was crashed) and puts `backup` in place of
/// its store: it restarts from that older copy. What its crashed lives'
/// stores held counts as durable only as far as the copy holds it.
pub fn restored(reg: &Registry, slot: usize, backup: Arc<MemStore>) {
    let mut r = reg.borrow_mut();
    for (life, kept) in r[slot].crashed.iter_mut() {
        *kept = (*kept).min(backup.applied(*life));
    }
    // The life that goes down now keeps what the copy held of it.
    if let Some(node) = r[slot].node {
        let kept = backup.applied(node);
        r[slot].crashed.push((node, kept));
    }
    r[slot].store = Some(backup);
    r[slot].shared = std::sync::Weak::new();
    r[slot].client = None;
    r[slot].node = None;
}

/// Marks `slot` down (its host was crashed) and empties its store, as an
/// operator does for a node refused for holding writes of a removed member
/// (docs/operations.md, "Removing a member"): what its lives' stores held
/// no longer has to survive.
pub fn wiped(reg: &Registry, slot: usize) {
    crashed(reg, slot);
    let mut r = reg.borrow_mut();
    for (_, kept) in r[slot].crashed.iter_mut() {
        *kept = 0;
    }
    if r[slot].store.is_some() {
        r[slot].store = Some(Arc::new(MemStore::new()));
    }
}

/// Marks `slot` down (its host was crashed): its memory is gone; its
/// store keeps what the last cut held.
/// Returns the life that crashed and how many of its writes its store held.
pub fn crashed(reg: &Registry, slot: usize) -> Option<(NodeId, u64)> {
    let mut r = reg.borrow_mut();
    let mut stored = None;
    if let (Some(node), Some(store)) = (r[slot].node, r[slot].store.clone()) {
        if BREAK_STORES.with(Cell::get) {
            store.forget_keys();
        }
        let kept = store.applied(node);
        r[slot].crashed.push((node, kept));
        stored = Some((node, kept));
    }
    r[slot].shared = std::sync::Weak::new();
    r[slot].client = None;
    r[slot].node = None;
    stored
}

/// Test-only: nodes started on this thread from now on never repair (see
/// docs/architecture.md, "Repair"). Repair mends what a broken merge left
/// divergent once the deleting node collected its tombstone (it forgets
/// what its peer held and no longer has), so the tests that break merges on
/// purpose turn it off to show the checkers still see them.
pub fn repair_off(off: bool) {
    REPAIR_OFF.with(|r| r.set(off));
}

/// `removed-peer-grace` of the nodes started on this thread from now on.
pub fn set_removed_grace(secs: u64) {
    REMOVED_GRACE_SECS.with(|g| g.set(secs));
}

/// Runs on this thread use `secs` as every node's `removed-peer-grace`
/// instead of drawing it (`None`: draw it).
pub fn force_removed_grace(secs: Option<u64>) {
    FORCED_GRACE_SECS.with(|g| g.set(secs));
}

pub fn forced_removed_grace() -> Option<u64> {
    FORCED_GRACE_SECS.with(Cell::get)
}

thread_local! {
    static REPAIR_OFF: Cell<bool> = const { Cell::new(false) };
    static REMOVED_GRACE_SECS: Cell<u64> = const { Cell::new(3_600) };
    static FORCED_GRACE_SECS: Cell<Option<u64>> = const { Cell::new(None) };
    /// Test-only: stores lose every key at a crash but keep their version
    /// vector, so restarted nodes claim writes they lack. The checkers must
    /// catch it.
    static BREAK_STORES: Cell<bool> = const { Cell::new(false) };
}

/// Turns the broken-store fault on or off for this thread's runs.
pub fn break_stores(on: bool) {
    BREAK_STORES.with(|b| b.set(on));
}

pub fn is_up(reg: &Registry, slot: usize) -> bool {
    reg.borrow()[slot].shared.strong_count() > 0
}

/// The node running in `slot` and its id, if it is up.
pub fn node(reg: &Registry, slot: usize) -> Option<(Arc<Node>, NodeId)> {
    let r = reg.borrow();
    Some((r[slot].shared.upgrade()?.node.clone(), r[slot].node?))
}

/// Runs one command on `slot` through the real dispatcher; the raw RESP
/// reply, or `None` when the node is down.
pub fn command(reg: &Registry, slot: usize, args: &[&[u8]]) -> Option<Vec<u8>> {
    let mut r = reg.borrow_mut();
    let s = &mut r[slot];
    let (Some(shared), Some(client)) = (s.shared.upgrade(), s.client.as_mut()) else {
        return None;
    };
    let mut out = Reply::new();
    let now_ms = shared.node.ks.clock.physical_unix_ms();
    // As a connection runs a pipeline: the writes' frames are staged and
    // handed over when the batch closes.
    let batch = shared.node.ks.batch();
    dispatch(&shared, client, &mut out, args, now_ms);
    drop(batch);
    Some(out.buf)
}
