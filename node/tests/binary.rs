//! The `dynakv` binary itself: its help names every command and the environment variables the
//! CLI reads, and bad flags give one clear line with exit code 2.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build
//! `target/debug/dynakv`, which the real-process tests in `tests/` start.

use std::process::Command;

fn dynakv(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dynakv"))
        .args(args)
        .env_remove("DYNAKV_NODES")
        .env_remove("DYNAKV_CA")
        .output()
        .expect("the dynakv binary runs")
}

#[test]
fn help_lists_every_command() {
    let out = dynakv(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "dev", "node", "join", "leave", "remove", "ca", "put", "get", "delete", "status", "bench",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "`{cmd}` missing from --help:\n{text}"
        );
    }
}

#[test]
fn client_commands_show_the_environment_variables_they_read() {
    let out = dynakv(&["get", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[env: DYNAKV_NODES"), "{text}");
    assert!(text.contains("[env: DYNAKV_CA"), "{text}");
    assert!(text.contains("[env: DYNAKV_CERT"), "{text}");
    assert!(text.contains("[env: DYNAKV_KEY"), "{text}");
}

#[test]
fn a_bad_flag_is_one_line_and_exit_code_2() {
    let out = dynakv(&["get", "k", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}
