//! Backend selection as an operator sees it: `io = "auto"` uses io_uring
//! where the kernel allows it and falls back to mmsg with one clear log line
//! where it does not (here: a seccomp filter refusing `io_uring_setup`, as
//! container profiles do); `io = "io-uring"` refuses to start with the
//! reason instead.

mod common;

use std::process::{Command, Stdio};

use common::{
    client_for, client_request, deny_io_uring, exchange, fastntpd_bin, write_temp, Fastntpd, Io,
};

const AUTO: &str = r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
io = "auto"
[clock]
local-stratum = 10
"#;

fn answers(server: &Fastntpd) -> bool {
    let sock = client_for(server.addrs[0]);
    exchange(&sock, server.addrs[0], &client_request(4, 99)).is_some()
}

#[test]
fn auto_picks_io_uring_where_the_kernel_allows_it() {
    if Io::uring_or_skip().is_none() {
        return;
    }
    let server = Fastntpd::start(AUTO);
    assert!(
        server.log.iter().any(|l| l.contains("io-uring backend")),
        "{:#?}",
        server.log
    );
    assert!(
        !server.log.iter().any(|l| l.contains("falling back")),
        "{:#?}",
        server.log
    );
    assert!(answers(&server));
    server.stop();
}

#[test]
fn auto_falls_back_to_mmsg_with_one_log_line_when_io_uring_is_refused() {
    let server = Fastntpd::start_with(AUTO, deny_io_uring);
    let fallback: Vec<_> = server
        .log
        .iter()
        .filter(|l| l.contains("falling back"))
        .collect();
    assert_eq!(fallback.len(), 1, "{:#?}", server.log);
    assert!(
        fallback[0].contains("io_uring is not usable here"),
        "{}",
        fallback[0]
    );
    assert!(
        fallback[0].contains("Operation not permitted"),
        "{}",
        fallback[0]
    );
    assert!(server
        .log
        .iter()
        .any(|l| l.contains("listening on") && l.contains("mmsg backend")));
    assert!(answers(&server));
    server.stop();
}

#[test]
fn explicit_io_uring_fails_fast_with_the_reason_when_refused() {
    let config = write_temp("uring.toml", &AUTO.replace("\"auto\"", "\"io-uring\""));
    let mut cmd = Command::new(fastntpd_bin());
    deny_io_uring(&mut cmd);
    let out = cmd
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run fastntpd");
    let _ = std::fs::remove_file(config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io = \"io-uring\""), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("use io = \"mmsg\""), "{err}");
}
