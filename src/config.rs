//! Configuration: redis.conf syntax, command-line overrides, validated once.
//!
//! `chorus server [FILE] [--directive value ...]` reads FILE (one directive a
//! line, `#` comments, quoted strings, `include`, sizes like `100mb`), then
//! applies the overrides in order, so the last word wins as in redis-server.
//! Any unknown or malformed directive fails start-up naming where it stood.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a directive came from, for error messages.
#[derive(Debug, Clone)]
pub enum Origin {
    File { path: PathBuf, line: usize },
    CommandLine,
    ConfigSet,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Origin::CommandLine => write!(f, "the command line"),
            Origin::ConfigSet => write!(f, "CONFIG SET"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("config error at {origin}: directive '{directive}': {message}")]
pub struct ConfigError {
    pub origin: Origin,
    pub directive: String,
    pub message: String,
}

/// The node's configuration. Every field is documented in `conf/chorus.conf`.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind: Vec<String>,
    /// Worker threads serving connections; default: the CPUs this process may use.
    pub server_threads: usize,
    /// Pin each worker thread to one CPU.
    pub server_thread_affinity: bool,
    pub requirepass: Option<Vec<u8>>,
    pub protected_mode: bool,
    pub maxclients: usize,
    /// Close a client idle this many seconds; 0 never.
    pub timeout_secs: u64,
    pub databases: usize,
    pub proto_max_bulk_len: usize,
    pub client_query_buffer_limit: usize,
    pub loglevel: LogLevel,
    pub logfile: Option<PathBuf>,
    /// The config file, for INFO's `config_file`.
    pub config_file: Option<PathBuf>,
    /// Accept replication links from peers (implied by `replicaof`).
    pub active_replica: bool,
    /// Peer masters to replicate with, by client address: (host, port).
    pub replicaof: Vec<(String, u16)>,
    /// The shared secret peers prove to each other.
    pub masterauth: Option<Vec<u8>>,
    /// Mutual TLS for peer links: this node's certificate and key, and the
    /// CA that signs every peer's.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    pub tls_ca_cert_file: Option<std::path::PathBuf>,
    /// UDP port for replication; default `port + 10000`.
    pub replication_port: Option<u16>,
    /// Peers must share it; a node of another cluster is refused.
    pub cluster_name: String,
    /// Bytes of recent writes kept for peers to resume from.
    pub repl_backlog_size: usize,
    /// A remote stamp further ahead than this is merged but does not move
    /// the local clock.
    pub max_clock_drift_ms: u64,
    /// Keep the node's state on disk (in `dir`), all keys in RAM.
    pub appendonly: bool,
    /// Where the data files go.
    pub dir: std::path::PathBuf,
    /// When writes are made durable.
    pub appendfsync: Fsync,
}

/// `appendfsync`: when a node's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the reply to every write.
    Always,
    /// Once a second: a crash loses at most about a second of writes no
    /// peer received.
    Everysec,
    /// Written once a second, flushed when the storage engine chooses.
    No,
}

impl Fsync {
    pub fn as_str(&self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::No => "no",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Verbose,
    Notice,
    Warning,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Verbose => "verbose",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
        }
    }

    /// The tracing filter for this level.
    pub fn filter(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Verbose => "info",
            LogLevel::Notice => "info",
            LogLevel::Warning => "warn",
        }
    }
}

/// The CPUs this process may run on (respects taskset and cgroup limits).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 6379,
            bind: vec!["127.0.0.1".to_string()],
            server_threads: available_cpus(),
            server_thread_affinity: false,
            requirepass: None,
            protected_mode: true,
            maxclients: 10_000,
            timeout_secs: 0,
            databases: 16,
            proto_max_bulk_len: 512 * 1024 * 1024,
            client_query_buffer_limit: 1024 * 1024 * 1024,
            loglevel: LogLevel::Notice,
            logfile: None,
            config_file: None,
            active_replica: false,
            replicaof: Vec::new(),
            masterauth: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_cert_file: None,
            replication_port: None,
            cluster_name: "chorus".to_string(),
            repl_backlog_size: 16 * 1024 * 1024,
            max_clock_drift_ms: 500,
            appendonly: false,
            dir: std::path::PathBuf::from("."),
            appendfsync: Fsync::Everysec,
        }
    }
}

/// Directives of DESIGN.md that later issues implement. A value that keeps
/// the feature off is accepted, so existing KeyDB configs load; anything
/// else is refused rather than silently ignored.
const NOT_YET: &[(&str, &[&str])] = &[
    ("maxmemory", &["0"]),
    ("maxmemory-policy", &["noeviction"]),
    ("storage-provider", &[]),
];

const MAX_INCLUDE_DEPTH: usize = 8;

/// Parses a size: a number with an optional unit (k kb m mb g gb, any case),
/// as redis.conf's `memtoll`.
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

impl Config {
    /// Builds the config from an optional file and `--name value...` overrides.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            config.config_file = Some(path.to_path_buf());
            config.read_file(path, 0)?;
        }
        for (name, args) in split_overrides(overrides)? {
            config.apply(&name, &args, &Origin::CommandLine)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn read_file(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: Origin::File {
                path: path.to_path_buf(),
                line: 0,
            },
            directive: String::new(),
            message: format!("cannot read file: {e}"),
        })?;
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin::File {
                path: path.to_path_buf(),
                line: i + 1,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words = split_line(line).ok_or_else(|| ConfigError {
                origin: origin.clone(),
                directive: line.to_string(),
                message: "unbalanced quotes".to_string(),
            })?;
            let Some((name, args)) = words.split_first() else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            if name == "include" {
                let [target] = args else {
                    return Err(err(&origin, &name, "expects one file name"));
                };
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(err(&origin, &name, "includes nested too deeply"));
                }
                let target = Path::new(target);
                let target = if target.is_relative() {
                    path.parent().unwrap_or(Path::new(".")).join(target)
                } else {
                    target.to_path_buf()
                };
                self.read_file(&target, depth + 1)?;
                continue;
            }
            self.apply(&name, args, &origin)?;
        }
        Ok(())
    }

    /// Applies one directive (lowercase `name`).
    pub fn apply(
        &mut self,
        name: &str,
        args: &[String],
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        let one = || -> Result<&str, ConfigError> {
            match args {
                [v] => Ok(v.as_str()),
                _ => Err(err(
                    origin,
                    name,
                    "wrong number of arguments (expects one value)",
                )),
            }
        };
        let bad = |what: &str| err(origin, name, &format!("{what}, got '{}'", args.join(" ")));
        match name {
            "port" => {
                self.port = one()?.parse().map_err(|_| bad("expects a port 0-65535"))?;
            }
            "bind" => {
                if args.is_empty() {
                    return Err(err(origin, name, "expects at least one address"));
                }
                self.bind = args
                    .iter()
                    .map(|a| a.trim_start_matches('-').to_string())
                    .collect();
            }
            "server-threads" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a thread count"))?;
                if !(1..=256).contains(&n) {
                    return Err(bad("expects 1 to 256 threads"));
                }
                self.server_threads = n;
            }
            "server-thread-affinity" => {
                self.server_thread_affinity =
                    parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "requirepass" => {
                let v = one()?;
                self.requirepass = (!v.is_empty()).then(|| v.as_bytes().to_vec());
            }
            "protected-mode" => {
                self.protected_mode = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "maxclients" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a number"))?;
                if n == 0 {
                    return Err(bad("expects at least 1"));
                }
                self.maxclients = n;
            }
            "timeout" => {
                self.timeout_secs = one()?.parse().map_err(|_| bad("expects seconds"))?;
            }
            "databases" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a number"))?;
                if !(1..=1024).contains(&n) {
                    return Err(bad("expects 1 to 1024 databases"));
                }
                self.databases = n;
            }
            "proto-max-bulk-len" => {
                let n = parse_size(one()?).ok_or_else(|| bad("expects a size like 512mb"))?;
                if n < 1024 {
                    return Err(bad("expects at least 1kb"));
                }
                self.proto_max_bulk_len = usize::try_from(n).map_err(|_| bad("too large"))?;
            }
            "client-query-buffer-limit" => {
                let n = parse_size(one()?).ok_or_else(|| bad("expects a size like 1gb"))?;
                if n < 1024 * 1024 {
                    return Err(bad("expects at least 1mb"));
                }
                self.client_query_buffer_limit =
                    usize::try_from(n).map_err(|_| bad("too large"))?;
            }
            "loglevel" => {
                self.loglevel = match one()?.to_ascii_lowercase().as_str() {
                    "debug" => LogLevel::Debug,
                    "verbose" => LogLevel::Verbose,
                    "notice" => LogLevel::Notice,
                    "warning" => LogLevel::Warning,
                    _ => return Err(bad("expects debug, verbose, notice or warning")),
                };
            }
            "logfile" => {
                let v = one()?;
                self.logfile = (!v.is_empty()).then(|| PathBuf::from(v));
            }
            "appendonly" => {
                self.appendonly = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "appendfsync" => {
                self.appendfsync = match one()?.to_ascii_lowercase().as_str() {
                    "always" => Fsync::Always,
                    "everysec" => Fsync::Everysec,
                    "no" => Fsync::No,
                    _ => return Err(bad("expects always, everysec or no")),
                };
            }
            "dir" => {
                let dir = one()?;
                if dir.is_empty() {
                    return Err(bad("expects a directory"));
                }
                self.dir = std::path::PathBuf::from(dir);
            }
            "active-replica" => {
                self.active_replica = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            // KeyDB's name for the same mesh; every Chorus node is a master.
            "multi-master" => {
                parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "replicaof" | "slaveof" => {
                let [host, port] = args else {
                    return Err(err(origin, name, "expects HOST PORT"));
                };
                let port: u16 = port.parse().map_err(|_| bad("expects HOST PORT"))?;
                self.replicaof.push((host.clone(), port));
            }
            "masterauth" => {
                let v = one()?;
                self.masterauth = (!v.is_empty()).then(|| v.as_bytes().to_vec());
            }
            "tls-cert-file" | "tls-key-file" | "tls-ca-cert-file" => {
                let v = one()?;
                let path = (!v.is_empty()).then(|| std::path::PathBuf::from(v));
                match name {
                    "tls-cert-file" => self.tls_cert_file = path,
                    "tls-key-file" => self.tls_key_file = path,
                    _ => self.tls_ca_cert_file = path,
                }
            }
            "replication-port" => {
                self.replication_port =
                    Some(one()?.parse().map_err(|_| bad("expects a port 0-65535"))?);
            }
            "cluster-name" => {
                let v = one()?;
                if v.is_empty() {
                    return Err(bad("expects a name"));
                }
                self.cluster_name = v.to_string();
            }
            "max-clock-drift" => {
                self.max_clock_drift_ms =
                    one()?.parse().map_err(|_| bad("expects milliseconds"))?;
            }
            "repl-backlog-size" => {
                let n = parse_size(one()?).ok_or_else(|| bad("expects a size like 16mb"))?;
                self.repl_backlog_size = usize::try_from(n)
                    .map_err(|_| bad("too large"))?
                    .max(16 * 1024);
            }
            _ => {
                if let Some((_, off_values)) = NOT_YET.iter().find(|(n, _)| *n == name) {
                    let value = args.join(" ").to_ascii_lowercase();
                    if !off_values.contains(&value.as_str()) {
                        return Err(err(
                            origin,
                            name,
                            "not yet supported by this version of chorus (the flash tier \
                             lands in a later release)",
                        ));
                    }
                } else {
                    return Err(err(origin, name, "unknown directive"));
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.is_empty() {
            return Err(err(&Origin::CommandLine, "bind", "no address to listen on"));
        }
        let tls_set = [
            ("tls-cert-file", &self.tls_cert_file),
            ("tls-key-file", &self.tls_key_file),
            ("tls-ca-cert-file", &self.tls_ca_cert_file),
        ];
        if tls_set.iter().any(|(_, f)| f.is_some()) {
            if let Some((missing, _)) = tls_set.iter().find(|(_, f)| f.is_none()) {
                return Err(err(
                    &Origin::CommandLine,
                    missing,
                    "mutual TLS for peer links needs tls-cert-file, tls-key-file and \
                     tls-ca-cert-file together",
                ));
            }
        }
        if self.replicating() && self.masterauth.is_none() && self.peer_tls().is_none() {
            return Err(err(
                &Origin::CommandLine,
                "masterauth",
                "replication needs peers to authenticate: set masterauth to the same value on \
                 every node, or tls-cert-file, tls-key-file and tls-ca-cert-file",
            ));
        }
        if self.replicating() {
            self.replication_listen_port()?;
        }
        Ok(())
    }

    /// The mutual-TLS files for peer links, when all three are set.
    pub fn peer_tls(&self) -> Option<chorus_transport::tls::TlsFiles> {
        Some(chorus_transport::tls::TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            ca: self.tls_ca_cert_file.clone()?,
        })
    }

    /// Whether this node joins a replication mesh.
    pub fn replicating(&self) -> bool {
        self.active_replica || !self.replicaof.is_empty()
    }

    /// The UDP port replication listens on.
    pub fn replication_listen_port(&self) -> Result<u16, ConfigError> {
        match self.replication_port {
            Some(p) => Ok(p),
            None if self.port == 0 => Ok(0),
            None => default_replication_port(self.port).ok_or_else(|| {
                err(
                    &Origin::CommandLine,
                    "replication-port",
                    "port + 10000 is past 65535: set replication-port",
                )
            }),
        }
    }
}

/// The replication port of a node listening for clients on `client_port`,
/// when `replication-port` is not set: port + 10000.
pub fn default_replication_port(client_port: u16) -> Option<u16> {
    client_port.checked_add(10_000)
}

fn err(origin: &Origin, directive: &str, message: &str) -> ConfigError {
    ConfigError {
        origin: origin.clone(),
        directive: directive.to_string(),
        message: message.to_string(),
    }
}

/// `--port 6380 --bind 127.0.0.1 ::1` into (name, values) pairs.
fn split_overrides(args: &[String]) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for arg in args {
        if let Some(name) = arg.strip_prefix("--") {
            out.push((name.to_ascii_lowercase(), Vec::new()));
        } else if let Some((_, values)) = out.last_mut() {
            values.push(arg.clone());
        } else {
            return Err(err(
                &Origin::CommandLine,
                arg,
                "expected --directive before a value",
            ));
        }
    }
    Ok(out)
}

/// Splits a config line into words with redis.conf quoting.
fn split_line(line: &str) -> Option<Vec<String>> {
    let mut ranges = Vec::new();
    let mut out = Vec::new();
    crate::resp::split_args_public(line.as_bytes(), &mut ranges, &mut out).ok()?;
    Some(
        ranges
            .into_iter()
            .map(|r| String::from_utf8_lossy(&out[r]).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("chorus-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn file_include_quotes_units_and_overrides() {
        let dir = tempdir("ok");
        write(&dir, "extra.conf", "maxclients 77\n");
        let main = write(
            &dir,
            "main.conf",
            "# comment\nport 7000\nrequirepass \"s3 cret\"\nproto-max-bulk-len 1mb\ninclude extra.conf\nappendonly no\n",
        );
        let c = Config::load(
            Some(&main),
            &[
                "--port".into(),
                "7001".into(),
                "--bind".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(c.requirepass.as_deref(), Some(&b"s3 cret"[..]));
        assert_eq!(c.proto_max_bulk_len, 1024 * 1024);
        assert_eq!(c.maxclients, 77);
        assert_eq!(c.bind, vec!["127.0.0.1", "::1"]);
    }

    #[test]
    fn errors_name_file_line_and_directive() {
        let dir = tempdir("bad");
        let main = write(&dir, "bad.conf", "port 7000\n\nfrobnicate yes\n");
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bad.conf:3") && e.contains("frobnicate") && e.contains("unknown"),
            "{e}"
        );

        let main = write(&dir, "bad2.conf", "port seventy\n");
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(e.contains("bad2.conf:1") && e.contains("port"), "{e}");

        let main = write(
            &dir,
            "bad3.conf",
            "storage-provider flash /var/lib/chorus\n",
        );
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(e.contains("not yet supported"), "{e}");

        let e = Config::load(None, &["--maxmemory".into(), "1gb".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("command line") && e.contains("not yet supported"),
            "{e}"
        );
    }

    #[test]
    fn persistence_directives_parse_and_bad_values_are_errors() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Config::load(
            None,
            &args(&[
                "--appendonly",
                "yes",
                "--dir",
                "/data",
                "--appendfsync",
                "always",
            ]),
        )
        .unwrap();
        assert!(c.appendonly);
        assert_eq!(c.dir, std::path::PathBuf::from("/data"));
        assert_eq!(c.appendfsync, Fsync::Always);
        let d = Config::load(None, &[]).unwrap();
        assert_eq!((d.appendonly, d.appendfsync), (false, Fsync::Everysec));
        for bad in [
            &["--appendonly", "maybe"][..],
            &["--appendfsync", "sometimes"],
            &["--dir", ""],
        ] {
            let e = Config::load(None, &args(bad)).unwrap_err().to_string();
            assert!(e.contains(&bad[0][2..]), "{e}");
        }
    }

    #[test]
    fn the_sample_replication_configs_load() {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        for file in [
            "node-a.conf",
            "node-b.conf",
            "three/node-1.conf",
            "three/node-2.conf",
            "three/node-3.conf",
        ] {
            let c =
                Config::load(Some(&conf.join(file)), &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(c.replicating() && c.masterauth.is_some(), "{file}");
            let peers = if file.starts_with("three") { 2 } else { 1 };
            assert_eq!(c.replicaof.len(), peers, "{file}");
            assert_eq!(c.replication_listen_port().unwrap(), c.port + 10_000);
        }
    }

    #[test]
    fn peers_authenticate_by_secret_or_all_three_certificate_files() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = Config::load(None, &args(&["--active-replica", "yes"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("masterauth") && e.contains("tls-cert-file"),
            "{e}"
        );
        let e = Config::load(
            None,
            &args(&[
                "--active-replica",
                "yes",
                "--tls-cert-file",
                "n.pem",
                "--tls-key-file",
                "n.key",
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tls-ca-cert-file") && e.contains("together"),
            "{e}"
        );
        let c = Config::load(
            None,
            &args(&[
                "--active-replica",
                "yes",
                "--tls-cert-file",
                "n.pem",
                "--tls-key-file",
                "n.key",
                "--tls-ca-cert-file",
                "ca.pem",
            ]),
        )
        .unwrap();
        assert_eq!(c.peer_tls().unwrap().ca, Path::new("ca.pem"));
        assert!(c.masterauth.is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100mb"), Some(100 * 1024 * 1024));
        assert_eq!(parse_size("1k"), Some(1000));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("12xb"), None);
        assert_eq!(parse_size(""), None);
    }
}
