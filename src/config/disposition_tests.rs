//! The dispositions of directives (applied, ignored, refused, unknown),
//! CONFIG GET's values, and the table's consistency with `Config::apply`
//! and docs/compatibility.md.

use std::path::Path;

use super::directives::{self, Kind, DIRECTIVES};
use super::tests::{tempdir, write};
use super::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn param(c: &Config, name: &str) -> String {
    c.params()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} missing from params"))
}

#[test]
fn the_table_has_each_name_once_and_aliases_never_shadow_names() {
    let mut seen = std::collections::HashSet::new();
    for d in DIRECTIVES {
        assert_eq!(d.name, d.name.to_ascii_lowercase());
        assert!(seen.insert(d.name), "{} twice", d.name);
        for alias in d.aliases {
            assert!(seen.insert(alias), "{alias} twice");
        }
    }
}

#[test]
fn the_compatibility_doc_lists_every_directive_and_alias() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md");
    let doc = std::fs::read_to_string(doc).unwrap();
    for d in DIRECTIVES {
        for name in std::iter::once(&d.name).chain(d.aliases) {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/compatibility.md lacks {name}"
            );
        }
    }
}

#[test]
fn every_applied_directive_is_parsed_by_apply() {
    for d in DIRECTIVES.iter().filter(|d| d.kind == Kind::Applied) {
        for name in std::iter::once(&d.name).chain(d.aliases) {
            let mut c = Config::default();
            if let Err(e) = c.apply(name, &[d.default.to_string()], &Origin::CommandLine) {
                assert!(!e.message.contains("unknown"), "{name}: {e}");
            }
        }
    }
}

#[test]
fn params_answer_every_directive_with_its_default() {
    let c = Config::default();
    let params = c.params();
    assert_eq!(params.len(), DIRECTIVES.len());
    for (d, (name, value)) in DIRECTIVES.iter().zip(&params) {
        assert_eq!(d.name, *name);
        // The worker count follows the machine's CPUs.
        if d.name != "server-threads" {
            assert_eq!(d.default, value, "{name}");
        }
    }
    assert_eq!(param(&c, "hz"), "10");
    assert_eq!(param(&c, "hash-max-listpack-entries"), "512");
    assert!(
        params.iter().all(|(n, _)| *n != "slaveof"),
        "aliases are not listed"
    );
}

#[test]
fn ignored_directives_are_accepted_kept_for_config_get_and_listed_once() {
    let dir = tempdir("ignored");
    let main = write(
        &dir,
        "ignored.conf",
        "hz 20\nDynamic-HZ no\nhz 30\nslave-read-only yes\nreplica-read-only no\n\
         lazyfree-lazy-expire whatever\noom-score-adj-values 0 200 800\nport 7000\n",
    );
    let c = Config::load(Some(&main), &args(&["--tcp-backlog", "128"])).unwrap();
    assert_eq!(
        c.ignored_directives(),
        vec![
            "hz",
            "dynamic-hz",
            "slave-read-only",
            "lazyfree-lazy-expire",
            "oom-score-adj-values",
            "tcp-backlog"
        ]
    );
    assert_eq!(param(&c, "hz"), "30", "the last value written wins");
    assert_eq!(param(&c, "dynamic-hz"), "no");
    assert_eq!(param(&c, "replica-read-only"), "no");
    assert_eq!(param(&c, "oom-score-adj-values"), "0 200 800");
    assert_eq!(param(&c, "tcp-backlog"), "128");
    assert_eq!(c.port, 7000);
    assert!(Config::default().ignored_directives().is_empty());

    let e = Config::load(None, &args(&["--hz"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hz") && e.contains("expects a value"), "{e}");
}

#[test]
fn tls_port_needs_the_certificate_files() {
    let e = Config::load(None, &args(&["--tls-port", "6380"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls-port") && e.contains("tls-cert-file"), "{e}");
    let files = [
        "--tls-port",
        "6380",
        "--tls-cert-file",
        "n.pem",
        "--tls-key-file",
        "n.key",
        "--tls-ca-cert-file",
        "ca.pem",
    ];
    let e = Config::load(None, &args(&files)).unwrap_err().to_string();
    assert!(
        e.contains("masterauth"),
        "a client certificate must not make a peer: {e}"
    );
    let with_secret = [&files[..], &["--masterauth", "s"]].concat();
    assert!(Config::load(None, &args(&with_secret)).is_ok());
    let no_client_certs = [&files[..], &["--tls-auth-clients", "no"]].concat();
    assert!(Config::load(None, &args(&no_client_certs)).is_ok());
    let e = Config::load(None, &args(&["--tls-auth-clients", "maybe"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("yes, no or optional"), "{e}");
}

#[test]
fn refused_directives_name_file_line_and_why() {
    let dir = tempdir("refused");
    for (line, why) in [
        ("daemonize yes", "systemd"),
        ("supervised systemd", "supervised no"),
        ("unixsocket /run/redis/redis.sock", "Unix socket"),
        ("cluster-enabled yes", "Redis Cluster"),
        ("rename-command FLUSHALL \"\"", "callable"),
        ("user alice on >pw ~* +@all", "ACL"),
        ("aclfile /etc/redis/users.acl", "ACL"),
        ("loadmodule /usr/lib/redis/modules/x.so", "modules"),
        ("min-slaves-to-write 1", "WAIT"),
        ("syslog-enabled yes", "syslog"),
        ("enable-pro", "Pro"),
        ("db-s3-object s3://bucket/dump.rdb", "S3"),
    ] {
        let main = write(&dir, "refused.conf", &format!("port 7000\n{line}\n"));
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        let name = line.split(' ').next().unwrap();
        assert!(
            e.contains("refused.conf:2") && e.contains(name) && e.contains(why),
            "{line}: {e}"
        );
    }
    let e = Config::load(None, &args(&["--daemonize", "yes"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("command line") && e.contains("only no or false"),
        "{e}"
    );

    // The last value wins, as in redis-server: Debian's systemd unit
    // starts its stock file (daemonize yes) with --daemonize no.
    let main = write(
        &dir,
        "rescued.conf",
        "daemonize yes\nmin-slaves-to-write 2\n",
    );
    let c = Config::load(
        Some(&main),
        &args(&["--daemonize", "no", "--min-replicas-to-write", "0"]),
    )
    .unwrap();
    assert_eq!(param(&c, "daemonize"), "no");
    let e = Config::load(Some(&main), &args(&["--daemonize", "no"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rescued.conf:2") && e.contains("min-slaves-to-write"),
        "{e}"
    );
    // KeyDB's flash tier is Chorus's too, with only its `flash` provider.
    let mut c = Config::default();
    c.apply(
        "storage-provider",
        &args(&["flash", "/tmp/flash"]),
        &Origin::ConfigSet,
    )
    .unwrap();
    assert_eq!(c.flash.as_deref(), Some(std::path::Path::new("/tmp/flash")));
    assert_eq!(param(&c, "storage-provider"), "flash /tmp/flash");
    assert_eq!(c.data_dir(), Some(std::path::Path::new("/tmp/flash")));
    // The tier logs every write as `appendonly yes` does, and says so.
    assert_eq!(param(&c, "appendonly"), "yes");
    for bad in [&["rocksdb", "/x"][..], &["flash"][..], &["flash", ""][..]] {
        let e = Config::default()
            .apply("storage-provider", &args(bad), &Origin::ConfigSet)
            .unwrap_err();
        assert!(e.message.contains("expects flash PATH"), "{bad:?}: {e}");
    }
}

#[test]
fn refused_directives_accept_the_values_that_keep_the_feature_off() {
    let dir = tempdir("off");
    let main = write(
        &dir,
        "off.conf",
        "daemonize no\nsupervised no\ntls-port 0\nunixsocket \"\"\ncluster-enabled no\n\
         maxmemory 0mb\nmaxmemory-policy NoEviction\nnotify-keyspace-events \"\"\n\
         aclfile \"\"\nmin-replicas-to-write 0\nsyslog-enabled no\n",
    );
    let c = Config::load(Some(&main), &[]).unwrap();
    assert!(
        c.ignored_directives().is_empty(),
        "in effect, so not listed as ignored"
    );
    assert_eq!(param(&c, "maxmemory"), "0");
    assert_eq!(param(&c, "notify-keyspace-events"), "");
}

#[test]
fn a_misspelt_directive_is_unknown_naming_file_and_line() {
    let dir = tempdir("misspelt");
    let main = write(
        &dir,
        "misspelt.conf",
        "port 7000\nhz 10\nmaxmemory-polcy noeviction\n",
    );
    let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
    assert!(
        e.contains("misspelt.conf:3")
            && e.contains("maxmemory-polcy")
            && e.contains("unknown directive")
            && e.contains("did you mean 'maxmemory-policy'"),
        "{e}"
    );
    assert_eq!(
        directives::suggest("slave-raed-only"),
        Some("slave-read-only")
    );
    assert_eq!(directives::suggest("frobnicate"), None);
    let e = Config::load(None, &args(&["--include", "x.conf"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("config file"), "{e}");
}

#[test]
fn aliases_and_any_case_reach_the_same_directive() {
    let dir = tempdir("alias");
    let main = write(
        &dir,
        "alias.conf",
        "SLAVEOF 127.0.0.1 7001\nMasterAuth s3cret\nHash-Max-Ziplist-Entries 128\n\
         slave-priority 50\nLUA-TIME-LIMIT 100\n",
    );
    let c = Config::load(Some(&main), &args(&["--PORT", "7000"])).unwrap();
    assert_eq!(c.port, 7000);
    assert_eq!(c.replicaof, vec![("127.0.0.1".to_string(), 7001)]);
    assert_eq!(param(&c, "replicaof"), "127.0.0.1 7001");
    assert_eq!(param(&c, "hash-max-listpack-entries"), "128");
    assert_eq!(param(&c, "replica-priority"), "50");
    assert_eq!(param(&c, "busy-reply-threshold"), "100");
    assert_eq!(
        c.ignored_directives(),
        vec![
            "hash-max-ziplist-entries",
            "slave-priority",
            "lua-time-limit"
        ]
    );
}

#[test]
fn save_is_validated_and_warned_about_apart_from_the_ignored_list() {
    let c = Config::load(None, &args(&["--save", "3600", "1", "300", "100"])).unwrap();
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("save 3600 1 300 100")
            && warnings[0].contains("no RDB snapshots")
            && warnings[0].contains("appendonly yes"),
        "{warnings:?}"
    );
    assert!(c.ignored_directives().is_empty());
    assert_eq!(
        param(&c, "save"),
        "",
        "no snapshots are taken, whatever was written"
    );

    let dir = tempdir("save");
    let main = write(
        &dir,
        "save.conf",
        "save 900 1\nsave 300 10\nappendonly yes\n",
    );
    let c = Config::load(Some(&main), &[]).unwrap();
    assert!(
        c.warnings()[0].contains("save 900 1 300 10") && c.warnings()[0].contains("kept on disk"),
        "{:?}",
        c.warnings()
    );
    let c = Config::load(Some(&main), &args(&["--save", ""])).unwrap();
    assert!(
        c.warnings().is_empty(),
        "save \"\" removes every save point"
    );

    for bad in [&["0", "1"][..], &["60"], &["60", "x"], &["-1", "1"]] {
        let mut list = vec!["--save"];
        list.extend_from_slice(bad);
        let e = Config::load(None, &args(&list)).unwrap_err().to_string();
        assert!(e.contains("save") && e.contains("SECONDS CHANGES"), "{e}");
    }
}

#[test]
fn client_output_buffer_limit_takes_redis_syntax_and_is_applied() {
    let dir = tempdir("cobl");
    let main = write(
        &dir,
        "cobl.conf",
        "client-output-buffer-limit normal 0 0 0\n\
         client-output-buffer-limit replica 512mb 128mb 30\n\
         client-output-buffer-limit PUBSUB 32mb 8mb 60\n",
    );
    let c = Config::load(Some(&main), &[]).unwrap();
    assert_eq!(
        c.client_output_buffer_limits.replica,
        OutputBufferLimit {
            hard: 512 << 20,
            soft: 128 << 20,
            soft_seconds: 30
        }
    );
    assert_eq!(
        param(&c, "client-output-buffer-limit"),
        "normal 0 0 0 slave 536870912 134217728 30 pubsub 33554432 8388608 60"
    );
    assert!(c.ignored_directives().is_empty());
    assert_eq!(
        param(&Config::default(), "client-output-buffer-limit"),
        "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"
    );

    for (line, why) in [
        (
            "client-output-buffer-limit master 0 0 0",
            "unknown client class",
        ),
        ("client-output-buffer-limit normal 1x 0 0", "size"),
        ("client-output-buffer-limit normal 0 0 -1", "seconds"),
        (
            "client-output-buffer-limit normal 0 0",
            "CLASS HARD SOFT SECONDS",
        ),
    ] {
        let main = write(&dir, "bad-cobl.conf", &format!("{line}\n"));
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bad-cobl.conf:1") && e.contains(why),
            "{line}: {e}"
        );
    }
}

#[test]
fn keydb_directives_are_known() {
    for name in [
        "server-threads",
        "server-thread-affinity",
        "active-replica",
        "multi-master",
        "storage-provider",
        "enable-pro",
        "db-s3-object",
        "scratch-file-path",
        "replica-weighting-factor",
        "min-clients-per-thread",
        "active-client-balancing",
        "availability-zone",
        "overload-protect-percent",
        "force-eviction-percent",
        "max-snapshot-slip",
        "storage-cache-mode",
        "tls-allowlist",
    ] {
        assert!(directives::lookup(name).is_some(), "{name}");
    }
    let c = Config::load(
        None,
        &args(&[
            "--multi-master",
            "yes",
            "--min-clients-per-thread",
            "50",
            "--server-thread-affinity",
            "true",
        ]),
    )
    .unwrap();
    assert_eq!(param(&c, "multi-master"), "yes");
    assert_eq!(c.ignored_directives(), vec!["min-clients-per-thread"]);
}

#[test]
fn a_redis_7_2_or_7_4_file_starts_with_their_new_directives_ignored() {
    let dir = tempdir("redis74");
    let main = write(
        &dir,
        "redis74.conf",
        "port 7000\nlocale-collate \"en_US.UTF-8\"\nset-max-listpack-entries 256\n\
         set-max-listpack-value 32\ncluster-announce-human-nodename node-a\n\
         max-new-connections-per-cycle 20\nmax-new-tls-connections-per-cycle 2\n\
         hide-user-data-from-log yes\nserver-cpulist 0-3\nbgsave_cpulist 1\n\
         cluster-ping-interval 100\n",
    );
    let c = Config::load(Some(&main), &[]).unwrap();
    assert_eq!(c.port, 7000);
    assert_eq!(
        c.ignored_directives(),
        vec![
            "locale-collate",
            "set-max-listpack-entries",
            "set-max-listpack-value",
            "cluster-announce-human-nodename",
            "max-new-connections-per-cycle",
            "max-new-tls-connections-per-cycle",
            "hide-user-data-from-log",
            "server-cpulist",
            "bgsave_cpulist",
            "cluster-ping-interval",
        ]
    );
    assert_eq!(param(&c, "locale-collate"), "en_US.UTF-8");
    assert_eq!(param(&c, "set-max-listpack-entries"), "256");
    assert_eq!(param(&c, "hide-user-data-from-log"), "yes");
    // 7.4's dashed name reaches 7.0's and 7.2's directive.
    assert_eq!(param(&c, "server_cpulist"), "0-3");
    assert_eq!(param(&c, "bgsave_cpulist"), "1");

    let d = Config::default();
    for (name, default) in [
        ("locale-collate", ""),
        ("set-max-listpack-entries", "128"),
        ("set-max-listpack-value", "64"),
        ("cluster-announce-human-nodename", ""),
        ("max-new-connections-per-cycle", "10"),
        ("max-new-tls-connections-per-cycle", "1"),
        ("hide-user-data-from-log", "no"),
        ("cluster-ping-interval", "0"),
    ] {
        assert_eq!(param(&d, name), default, "{name}");
    }
    for alias in [
        "server-cpulist",
        "bio-cpulist",
        "aof-rewrite-cpulist",
        "bgsave-cpulist",
    ] {
        assert!(
            directives::lookup(alias).is_some_and(|d| d.aliases.contains(&alias)),
            "{alias}"
        );
    }
    // Only in redis-server builds for Redis's own tests.
    let e = Config::load(None, &args(&["--req-res-logfile", "x"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown directive"), "{e}");
}
