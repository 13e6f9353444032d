//! `chorus-linkem`: a UDP relay that makes a loopback link look like a
//! long-distance one (see the library's doc). Both directions get the same
//! link unless `--back-*` says otherwise.
//!
//!   chorus-linkem --listen 127.0.0.1:26380 --to 127.0.0.1:16380 --delay 50ms --rate 1gbit

use std::net::SocketAddr;
use std::time::Duration;

use chorus_linkem::{parse_duration, parse_rate, Link, Relay};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chorus-linkem",
    about = "A UDP relay with delay, jitter, loss and a bandwidth cap"
)]
struct Args {
    /// Address to listen on (senders send here).
    #[arg(long)]
    listen: SocketAddr,
    /// Address every datagram is relayed to.
    #[arg(long)]
    to: SocketAddr,
    /// One-way delay (each direction): 50ms, 1s.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    delay: Duration,
    /// Up to this much more delay, drawn per datagram.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Probability a datagram is lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bandwidth cap per direction: 100mbit, 1gbit (none by default).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// Bytes the bottleneck's queue holds.
    #[arg(long, default_value_t = 4 << 20)]
    queue: usize,
    /// Let jitter deliver datagrams out of order.
    #[arg(long)]
    reorder: bool,
    /// The other direction's delay, if different.
    #[arg(long, value_parser = parse_duration)]
    back_delay: Option<Duration>,
    /// Seed of the loss and jitter draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the counts every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    report_every: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.loss) {
        eprintln!("--loss is a probability, 0 to 1");
        std::process::exit(2);
    }
    let forward = Link {
        delay: args.delay,
        jitter: args.jitter,
        loss: args.loss,
        rate: args.rate,
        queue: args.queue,
        reorder: args.reorder,
    };
    let back = Link {
        delay: args.back_delay.unwrap_or(args.delay),
        ..forward
    };
    let relay = Relay::start(args.listen, args.to, forward, back, args.seed).await?;
    eprintln!("relaying {} -> {} ({forward:?})", relay.local, args.to);
    let report = |relay: &Relay| {
        eprintln!(
            "forward: {}; back: {}",
            relay.forward.summary(),
            relay.back.summary()
        )
    };
    if args.report_every > 0 {
        let mut tick = tokio::time::interval(Duration::from_secs(args.report_every));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => report(&relay),
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    report(&relay);
    Ok(())
}
