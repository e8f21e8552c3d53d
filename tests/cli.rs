//! The `fastntpd` command line as an operator meets it: configuration
//! checking, readable errors with exit code 1, the privileged-port message,
//! and clean shutdown on SIGINT and SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};

use common::{fastntpd_bin, require_tool, write_temp, Fastntpd};

fn fastntpd(args: &[&str]) -> Output {
    Command::new(fastntpd_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run fastntpd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_shipped_config_passes_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for dir in ["examples", "systemd"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let out = fastntpd(&["--check-config", path.to_str().unwrap()]);
                assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
                assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "expected example and systemd configs, found {checked}"
    );
}

#[test]
fn check_config_rejects_an_unknown_key_naming_it_and_its_line() {
    let path = write_temp(
        "bad.toml",
        "[server]\nworkers = 2\nlisten-on = [\"127.0.0.1:123\"]\n",
    );
    let out = fastntpd(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("listen-on") && err.contains("line 3"), "{err}");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn bad_values_and_missing_files_exit_1_with_a_message() {
    let path = write_temp("bad.toml", "[clock]\nlocal-stratum = 99\n");
    let out = fastntpd(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("clock.local-stratum"),
        "{}",
        stderr(&out)
    );

    let out = fastntpd(&["--config", "/nonexistent/fastntpd.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/fastntpd.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn binding_port_123_without_privilege_says_what_to_do() {
    let path = write_temp(
        "priv.toml",
        "[server]\nlisten = [\"127.0.0.1:123\"]\nworkers = 1\n",
    );
    let config = path.to_str().unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root {
        // Root keeps every capability: drop the one that matters.
        let Some(capsh) = require_tool("capsh") else {
            return;
        };
        let script = format!("exec {} --config {config}", fastntpd_bin());
        Command::new(capsh)
            .args(["--drop=cap_net_bind_service", "--", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    } else {
        fastntpd(&["--config", config])
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "127.0.0.1:123",
        "CAP_NET_BIND_SERVICE",
        "root",
        "[server] listen",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
}

#[test]
fn sigint_stops_all_workers_cleanly() {
    let server = Fastntpd::start("[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n");
    // Exit status 0, both workers' final counts, and "stopped" are checked
    // by stop_with.
    let stats = server.stop_with(libc::SIGINT);
    assert_eq!(stats.len(), 2);
}

/// `--check-config` reports every warning the server would log when
/// started with the same file (and still passes it: warnings are not
/// errors).
#[test]
fn check_config_reports_the_warnings_a_start_would_log() {
    let text = "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
                [clock]\nlocal-stratum = 10\ndrift-file = \"/var/lib/fastntpd/drift\"\n\
                leap-file = \"/nonexistent/leap-seconds.list\"\n\
                [[upstream]]\naddress = \"127.0.0.1:9\"\nmin-poll = 0\nmax-poll = 1\n";
    let path = write_temp("warn.toml", text);
    let out = fastntpd(&["--check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warnings: Vec<String> = stderr(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("fastntpd: warning: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 3, "{}", stderr(&out));
    for needle in ["min-poll 0", "drift-file", "leap-second file"] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "no warning about {needle}: {warnings:#?}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 warnings"));
    // The same lines, word for word, when it starts.
    let server = Fastntpd::start(text);
    let log = server.log.join("\n");
    for w in &warnings {
        assert!(log.contains(w.as_str()), "not logged at start: {w}\n{log}");
    }
    server.stop();
}
