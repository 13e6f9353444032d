//! `chorus-loadgen -p PORT -t set -n 1000000`: pipelined writes from one
//! thread, printed as redis-benchmark's `--csv` line (`"SET","ops/s"`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Context};
use chorus_loadgen::{build_batches, Command, ReplyCounter};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "A pipelined write load that costs little CPU")]
struct Args {
    #[arg(short = 'p', long, default_value_t = 6379)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// set, hset, sadd, incr, zadd, hincrby, zincrby or session (a three-field HSET).
    #[arg(short = 't', long, default_value = "set")]
    test: String,
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    requests: u64,
    #[arg(short = 'c', long, default_value_t = 50)]
    clients: usize,
    #[arg(short = 'P', long, default_value_t = 16)]
    pipeline: usize,
    /// Keys (or elements) drawn from 0..r.
    #[arg(short = 'r', long, default_value_t = 100_000)]
    keyspace: u64,
    /// Value size in bytes.
    #[arg(short = 'd', long, default_value_t = 3)]
    data_size: usize,
    /// Distinct pipelines laid out before the run; connections cycle them.
    #[arg(long, default_value_t = 4096)]
    batches: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(command) = Command::parse(&args.test) else {
        bail!(
            "unknown test {:?}: set, hset, sadd, incr, zadd, hincrby, zincrby or session (a three-field HSET)",
            args.test
        );
    };
    if args.clients == 0 || args.pipeline == 0 || args.batches == 0 {
        bail!("clients, pipeline and batches must be at least 1");
    }
    let batches = Rc::new(build_batches(
        command,
        args.pipeline,
        args.batches,
        args.keyspace,
        args.data_size,
        args.seed,
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    let (elapsed, totals) = local.block_on(&runtime, run(&args, batches))?;
    let rate = totals.replies as f64 / elapsed;
    println!("\"{}\",\"{rate:.2}\"", command.name());
    if totals.errors > 0 {
        bail!(
            "{} of {} replies were errors, the first: {}",
            totals.errors,
            totals.replies,
            totals.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

async fn run(args: &Args, batches: Rc<Vec<Vec<u8>>>) -> anyhow::Result<(f64, ReplyCounter)> {
    let mut streams = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let stream = TcpStream::connect((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("connecting to {}:{}", args.host, args.port))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    // Requests not yet claimed by a connection, a pipeline at a time.
    let left = Rc::new(Cell::new(args.requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let batches = batches.clone();
        let left = left.clone();
        let pipeline = args.pipeline as u64;
        tasks.push(tokio::task::spawn_local(async move {
            drive(stream, &batches, i, pipeline, &left).await
        }));
    }
    let mut totals = ReplyCounter::default();
    for task in tasks {
        let counted = task.await.context("a connection's task")??;
        totals.replies += counted.replies;
        totals.errors += counted.errors;
        if totals.first_error.is_none() {
            totals.first_error = counted.first_error;
        }
    }
    Ok((started.elapsed().as_secs_f64(), totals))
}

/// Sends whole pipelines while requests are left, each after the last's
/// replies, as redis-benchmark's `-P` does.
async fn drive(
    mut stream: TcpStream,
    batches: &[Vec<u8>],
    first: usize,
    pipeline: u64,
    left: &Cell<u64>,
) -> anyhow::Result<ReplyCounter> {
    let mut counter = ReplyCounter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut next = first % batches.len();
    while left.get() >= pipeline {
        left.set(left.get() - pipeline);
        stream.write_all(&batches[next]).await.context("sending")?;
        next = (next + 1) % batches.len();
        let want = counter.replies + pipeline;
        while counter.replies < want {
            let n = stream.read(&mut buf).await.context("reading replies")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            counter.feed(&buf[..n])?;
        }
    }
    Ok(counter)
}
