//! Pub/sub commands (Redis's pubsub group): SUBSCRIBE, UNSUBSCRIBE,
//! PSUBSCRIBE, PUNSUBSCRIBE, SSUBSCRIBE, SUNSUBSCRIBE, PUBLISH, SPUBLISH,
//! PUBSUB. A message published here reaches this node's subscribers at once
//! and every peer's on the live replication stream (see `crate::pubsub`).

use super::Flag::*;
use super::{is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use crate::pubsub::{Kind, Space, Subscriptions};

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "subscribe",
        arity: -2,
        flags: Flags::of(&[NoMulti]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "channel [channel ...]",
        summary: "Listens for messages published to channels.",
        run: subscribe,
    },
    Spec {
        name: "unsubscribe",
        arity: -1,
        flags: Flags::of(&[NoMulti]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "[channel [channel ...]]",
        summary: "Stops listening to messages posted to channels.",
        run: unsubscribe,
    },
    Spec {
        name: "psubscribe",
        arity: -2,
        flags: Flags::of(&[NoMulti]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "pattern [pattern ...]",
        summary: "Listens for messages published to channels that match one or more patterns.",
        run: psubscribe,
    },
    Spec {
        name: "punsubscribe",
        arity: -1,
        flags: Flags::of(&[NoMulti]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "[pattern [pattern ...]]",
        summary: "Stops listening to messages published to channels that match one or more patterns.",
        run: punsubscribe,
    },
    Spec {
        name: "ssubscribe",
        arity: -2,
        flags: Flags::of(&[NoMulti]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "shardchannel [shardchannel ...]",
        summary: "Listens for messages published to shard channels.",
        run: ssubscribe,
    },
    Spec {
        name: "sunsubscribe",
        arity: -1,
        flags: Flags::of(&[NoMulti]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "[shardchannel [shardchannel ...]]",
        summary: "Stops listening to messages posted to shard channels.",
        run: sunsubscribe,
    },
    Spec {
        name: "publish",
        arity: 3,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "channel message",
        summary: "Posts a message to a channel.",
        run: publish,
    },
    Spec {
        name: "spublish",
        arity: 3,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "shardchannel message",
        summary: "Post a message to a shard channel",
        run: spublish,
    },
    Spec {
        name: "pubsub",
        arity: -2,
        flags: Flags::of(&[]),
        keys: Keys::None,
        group: "pubsub",
        syntax: "CHANNELS [pattern]|NUMSUB [channel ...]|NUMPAT|SHARDCHANNELS [pattern]|SHARDNUMSUB [shardchannel ...]|HELP",
        summary: "A container for Pub/Sub commands.",
        run: pubsub,
    },
];

/// The commands a RESP2 client may send while subscribed.
pub fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "unsubscribe"
            | "psubscribe"
            | "punsubscribe"
            | "ssubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}

fn reply_word(kind: Kind, subscribing: bool) -> &'static [u8] {
    match (kind, subscribing) {
        (Kind::Channel, true) => b"subscribe",
        (Kind::Channel, false) => b"unsubscribe",
        (Kind::Pattern, true) => b"psubscribe",
        (Kind::Pattern, false) => b"punsubscribe",
        (Kind::ShardChannel, true) => b"ssubscribe",
        (Kind::ShardChannel, false) => b"sunsubscribe",
    }
}

fn subs<'a>(x: &'a mut Exec) -> &'a mut Subscriptions {
    let hub = x.ks.pubsub.clone();
    let client = x.session.handle.clone();
    x.session
        .subs
        .get_or_insert_with(|| Subscriptions::new(hub, &client.mailbox))
}

fn add(x: &mut Exec, kind: Kind, names: &[&[u8]]) -> CmdResult {
    for name in names {
        let count = {
            let s = subs(x);
            s.subscribe(kind, name);
            s.count_for(kind)
        };
        x.out.push(3);
        x.out.bulk(reply_word(kind, true));
        x.out.bulk(name);
        x.out.int(count as i64);
    }
    Ok(())
}

fn remove(x: &mut Exec, kind: Kind, names: &[&[u8]]) -> CmdResult {
    let word = reply_word(kind, false);
    let all;
    let names: Vec<&[u8]> = if names.is_empty() {
        all = x
            .session
            .subs
            .as_ref()
            .map(|s| s.names(kind))
            .unwrap_or_default();
        all.iter().map(|b| &b[..]).collect()
    } else {
        names.to_vec()
    };
    if names.is_empty() {
        // Nothing to leave: one reply with a null name (as Redis).
        let count = x.session.subs.as_ref().map_or(0, |s| s.count_for(kind));
        x.out.push(3);
        x.out.bulk(word);
        x.out.null();
        x.out.int(count as i64);
        return Ok(());
    }
    for name in names {
        let count = match &mut x.session.subs {
            Some(s) => {
                s.unsubscribe(kind, name);
                s.count_for(kind)
            }
            None => 0,
        };
        x.out.push(3);
        x.out.bulk(word);
        x.out.bulk(name);
        x.out.int(count as i64);
    }
    Ok(())
}

fn subscribe(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    add(x, Kind::Channel, &args[1..])
}

fn unsubscribe(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    remove(x, Kind::Channel, &args[1..])
}

fn psubscribe(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    add(x, Kind::Pattern, &args[1..])
}

fn punsubscribe(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    remove(x, Kind::Pattern, &args[1..])
}

fn ssubscribe(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    add(x, Kind::ShardChannel, &args[1..])
}

fn sunsubscribe(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    remove(x, Kind::ShardChannel, &args[1..])
}

fn publish(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    publish_in(x, Space::Global, args)
}

fn spublish(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    publish_in(x, Space::Shard, args)
}

fn publish_in(x: &mut Exec, space: Space, args: &[&[u8]]) -> CmdResult {
    let receivers = x.ks.publish_message(space, args[1], args[2]);
    if !x.session.in_exec {
        // A RESP3 client publishing to a channel it listens to gets the
        // push before the reply, as Redis writes it.
        x.session
            .handle
            .mailbox
            .drain_into(x.out, crate::resp::REPLY_BATCH_BYTES);
    }
    x.out.int(receivers as i64);
    Ok(())
}

const HELP: &[&str] = &[
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
];

fn pubsub(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    let hub = x.ks.pubsub.clone();
    let channels = |space: Space, x: &mut Exec| -> CmdResult {
        let pattern = match args.len() {
            2 => None,
            3 => Some(args[2]),
            _ => return Err(Error::unknown_subcommand("pubsub", sub)),
        };
        let names = hub.channels(space, pattern);
        x.out.array(names.len());
        for n in &names {
            x.out.bulk(n);
        }
        Ok(())
    };
    let numsub = |space: Space, x: &mut Exec| {
        x.out.array(2 * (args.len() - 2));
        for channel in &args[2..] {
            x.out.bulk(channel);
            x.out.int(hub.subscribers(space, channel) as i64);
        }
    };
    if is(sub, "channels") {
        channels(Space::Global, x)?;
    } else if is(sub, "shardchannels") {
        channels(Space::Shard, x)?;
    } else if is(sub, "numsub") {
        numsub(Space::Global, x);
    } else if is(sub, "shardnumsub") {
        numsub(Space::Shard, x);
    } else if is(sub, "numpat") && args.len() == 2 {
        x.out.int(hub.patterns() as i64);
    } else if is(sub, "help") && args.len() == 2 {
        x.out.lines(HELP);
    } else {
        return Err(Error::unknown_subcommand("pubsub", sub));
    }
    Ok(())
}
