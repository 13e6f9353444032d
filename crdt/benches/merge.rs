//! Merge and encode/decode of a typical small key: a 16-byte key with a
//! 32-byte value. Results are recorded in docs/benchmarks.md.

use chorus_crdt::{decode, encode, Delta, KeyState, NodeId, Stamp};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn typical() -> (KeyState, KeyState) {
    let stamp = |time| Stamp {
        time,
        node: NodeId(0x1234_5678_9abc_def0),
    };
    let mut state = KeyState::default();
    let first = state.write(stamp(1_000), Some(&[b'a'; 32]), 0);
    state.merge(&first);
    let next = state.write(stamp(2_000), Some(&[b'b'; 32]), 0);
    (state, next)
}

fn benches(c: &mut Criterion) {
    let (state, delta) = typical();
    c.bench_function("merge register write into 32B key", |b| {
        b.iter(|| {
            let mut s = state.clone();
            black_box(s.merge(black_box(&delta)));
            s
        })
    });
    c.bench_function("clone 32B key state (baseline for merge)", |b| {
        b.iter(|| black_box(state.clone()))
    });
    let counter = {
        let mut s = KeyState::default();
        for n in 1..=3u64 {
            let d = s.incr(
                Stamp {
                    time: n,
                    node: NodeId(n),
                },
                1,
                0.0,
                false,
            );
            s.merge(&d);
        }
        s
    };
    let incr = counter.incr(
        Stamp {
            time: 9,
            node: NodeId(2),
        },
        1,
        0.0,
        false,
    );
    c.bench_function("merge increment into 3-node counter", |b| {
        b.iter(|| {
            let mut s = counter.clone();
            black_box(s.merge(black_box(&incr)));
            s
        })
    });
    let wire = Delta::Key {
        db: 0,
        key: b"user:0000001234".to_vec(),
        state: delta.clone(),
    };
    let bytes = encode(&wire).expect("encodes");
    println!(
        "encoded delta of 16B key + 32B value: {} bytes",
        bytes.len()
    );
    c.bench_function("encode delta (16B key, 32B value)", |b| {
        b.iter(|| encode(black_box(&wire)))
    });
    c.bench_function("decode delta (16B key, 32B value)", |b| {
        b.iter(|| decode::<Delta>(black_box(&bytes)))
    });
}

criterion_group!(merge, benches);
criterion_main!(merge);
