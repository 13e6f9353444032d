//! The `chorus` command line: help, errors and exit codes as users of clap
//! tools expect (0 done, 1 failed, 2 bad usage).

use std::process::{Command, Output};

fn chorus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .output()
        .expect("run chorus")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_lists_every_subcommand_and_exits_0() {
    let out = chorus(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for sub in ["server", "gen-certs", "sim", "audit"] {
        assert!(text(&out).contains(sub), "{}", text(&out));
    }
    let out = chorus(&["server", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).contains("[CONFIG]"), "{}", text(&out));
    let out = chorus(&["--version"]);
    assert!(text(&out).starts_with("chorus "), "{}", text(&out));
}

#[test]
fn bad_usage_exits_2_with_a_clear_error() {
    let out = chorus(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("unrecognized subcommand 'frobnicate'"),
        "{}",
        text(&out)
    );
    let out = chorus(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = chorus(&["gen-certs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("<DIR>"), "{}", text(&out));
    let out = chorus(&["gen-certs", "/tmp/x", "--nodes", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_failure_exits_1_naming_what_failed() {
    let out = chorus(&["server", "/nonexistent/chorus.conf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("/nonexistent/chorus.conf") && text(&out).contains("cannot read"),
        "{}",
        text(&out)
    );
    let out = chorus(&["server", "--port", "seventy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("'port'"), "{}", text(&out));
}

#[test]
fn gen_certs_writes_a_ca_and_one_certificate_per_node() {
    let dir = std::env::temp_dir().join(format!("chorus-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = chorus(&[
        "gen-certs",
        dir.to_str().expect("utf-8 temp dir"),
        "--nodes",
        "2",
        "--cluster",
        "demo",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for file in [
        "ca.pem",
        "node-1.pem",
        "node-1.key",
        "node-2.pem",
        "node-2.key",
    ] {
        assert!(dir.join(file).exists(), "{file} missing: {}", text(&out));
    }
    assert!(!dir.join("node-3.pem").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
