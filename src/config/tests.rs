//! The configuration file end to end: parsing, defaults, errors that
//! name their key and line, warnings.

use std::path::Path;

use super::upstream::split_host_port;
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn empty_file_gives_the_defaults() {
    let c = parse("").unwrap();
    // A file lists its own upstreams: none here.
    assert_eq!(
        c,
        Config {
            upstreams: Vec::new(),
            ..Config::default()
        }
    );
    assert_eq!(c.clock.discipline, DisciplineMode::Software);
    assert_eq!(c.clock.step_threshold, 0.128);
    assert_eq!(c.clock.panic_threshold, 1000.0);
    assert!(c.clock.first_step_unlimited);
    assert_eq!(c.server.listen.len(), 2);
    assert_eq!(c.server.listen[0].port(), 123);
    assert!(c.server.listen[1].is_ipv6());
    assert_eq!(c.server.workers, Workers::Auto);
    assert_eq!(c.server.io, IoBackend::Auto);
    assert_eq!(c.server.timestamping, Timestamping::Software);
    assert_eq!(c.clock.local_stratum, None);
}

#[test]
fn full_file_parses() {
    let c = parse(
        r#"
        [server]
        listen = ["127.0.0.1:1123", "[::1]:1123"]
        workers = 2
        io = "mmsg"
        timestamping = "none"
        [clock]
        local-stratum = 10
        "#,
    )
    .unwrap();
    assert_eq!(c.server.listen[1], "[::1]:1123".parse().unwrap());
    assert_eq!(c.server.workers, Workers::Count(2));
    assert_eq!(c.server.io, IoBackend::Mmsg);
    assert_eq!(c.server.timestamping, Timestamping::None);
    assert_eq!(c.clock.local_stratum, Some(10));
    assert_eq!(
        parse("[server]\nio = \"io-uring\"").unwrap().server.io,
        IoBackend::IoUring
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let err = parse("[server]\nworkers = 1\nlistne = []\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("listne"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    let err = parse("[sever]\n").unwrap_err().to_string();
    assert!(err.contains("sever") && err.contains("line 1"), "{err}");
}

#[test]
fn bad_values_say_what_is_allowed() {
    for (text, needle) in [
        ("[server]\nworkers = 0", "\"auto\" or a number"),
        ("[server]\nworkers = \"many\"", "\"auto\" or a number"),
        ("[server]\nlisten = [\"127.0.0.1\"]", "line 2"),
        ("[server]\nlisten = []", "needs at least one address"),
        (
            "[server]\nlisten = [\"[::1]:5\", \"[::1]:5\"]",
            "listed twice",
        ),
        ("[server]\nio = \"epoll\"", "io-uring"),
        ("[server]\ntimestamping = \"hardware\"", "not supported yet"),
        ("[clock]\nlocal-stratum = 16", "1 to 15"),
        ("[clock]\nlocal-stratum = 0", "1 to 15"),
        ("[server\n", "line 1"),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
        assert!(err.starts_with("test.toml"), "{err}");
    }
}

#[test]
fn built_in_defaults_use_the_pool() {
    let c = Config::default();
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.upstreams[0].address, "pool.ntp.org");
    assert_eq!(c.upstreams[0].kind, UpstreamKind::Pool);
    assert!(c.upstreams[0].iburst);
    assert_eq!((c.upstreams[0].min_poll, c.upstreams[0].max_poll), (6, 10));
    assert!(c.validate().is_ok());
    assert!(c.warnings().is_empty());
}

#[test]
fn clock_and_upstreams_parse() {
    let c = parse(
        r#"
        [clock]
        discipline = "kernel"
        step-threshold = 0.5
        panic-threshold = 0
        first-step-unlimited = false
        drift-file = "/var/lib/fastntpd/drift"
        leap-file = "/usr/share/zoneinfo/leap-seconds.list"
        [[upstream]]
        address = "ntp.nict.jp"
        [[upstream]]
        address = "[2001:db8::1]:1123"
        kind = "server"
        iburst = false
        min-poll = -4
        max-poll = 0
        [[upstream]]
        address = "2.debian.pool.ntp.org"
        kind = "pool"
        "#,
    )
    .unwrap();
    assert_eq!(c.clock.discipline, DisciplineMode::Kernel);
    assert_eq!(c.clock.step_threshold, 0.5);
    assert_eq!(c.clock.panic_threshold, 0.0);
    assert!(!c.clock.first_step_unlimited);
    assert_eq!(
        c.clock.drift_file.as_deref(),
        Some(Path::new("/var/lib/fastntpd/drift"))
    );
    assert_eq!(c.upstreams.len(), 3);
    let nict = &c.upstreams[0];
    assert_eq!(nict.host_port().unwrap(), ("ntp.nict.jp".into(), 123));
    assert_eq!(
        (nict.kind, nict.iburst, nict.min_poll, nict.max_poll),
        (UpstreamKind::Server, true, 6, 10)
    );
    let v6 = &c.upstreams[1];
    assert_eq!(v6.host_port().unwrap(), ("2001:db8::1".into(), 1123));
    assert_eq!((v6.iburst, v6.min_poll, v6.max_poll), (false, -4, 0));
    assert_eq!(c.upstreams[2].kind, UpstreamKind::Pool);
    assert_eq!(c.warnings().len(), 1);
    assert!(c.warnings()[0].contains("2001:db8::1"));
}

#[test]
fn upstream_addresses_split_into_host_and_port() {
    for (text, host, port) in [
        ("ntp.example", "ntp.example", 123),
        ("127.0.0.1:1123", "127.0.0.1", 1123),
        ("::1", "::1", 123),
        ("[::1]", "::1", 123),
        ("[fe80::1]:5", "fe80::1", 5),
    ] {
        assert_eq!(
            split_host_port(text).unwrap(),
            (host.to_owned(), port),
            "{text}"
        );
    }
    let bad_port = |p: &str| AddressError::BadPort {
        address: format!("host:{p}"),
        port: p.into(),
    };
    for (bad, want) in [
        ("", AddressError::Empty),
        ("host:0", bad_port("0")),
        ("host:x", bad_port("x")),
        ("[::1", AddressError::MissingBracket("[::1".into())),
        ("[::1]x", AddressError::ExpectedPort("[::1]x".into())),
        (":123", AddressError::NoHost(":123".into())),
    ] {
        assert_eq!(split_host_port(bad), Err(want), "{bad}");
    }
}

#[test]
fn bad_clock_and_upstream_values_name_their_key() {
    for (text, needle) in [
        ("[clock]\ndiscipline = \"ntpd\"", "software"),
        ("[clock]\nstep-threshold = -1", "clock.step-threshold"),
        ("[clock]\npanic-threshold = nan", "clock.panic-threshold"),
        ("[clock]\npanic-threshold = 0.01", "below step-threshold"),
        ("[clock]\ndrift-file = \"\"", "clock.drift-file"),
        ("[clock]\ndiscipline = \"external\"", "needs [[upstream]]"),
        ("[[upstream]]\nkind = \"pool\"", "address"),
        ("[[upstream]]\naddress = \"a\"\nkind = \"peer\"", "pool"),
        ("[[upstream]]\naddress = \"a:99999\"", "upstream.address"),
        (
            "[[upstream]]\naddress = \"a\"\n[[upstream]]\naddress = \"A:123\"",
            "listed twice",
        ),
        (
            "[[upstream]]\naddress = \"a\"\nmin-poll = -5",
            "upstream.min-poll",
        ),
        (
            "[[upstream]]\naddress = \"a\"\nmax-poll = 18",
            "upstream.max-poll",
        ),
        (
            "[[upstream]]\naddress = \"a\"\nmin-poll = 8\nmax-poll = 7",
            "above max-poll",
        ),
        ("[[upstream]]\naddress = \"a\"\nburst = true", "burst"),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    assert!(parse("[clock]\ndiscipline = \"external\"\nlocal-stratum = 1").is_ok());
}

#[test]
fn value_errors_name_the_line_of_their_key() {
    let text = "[server]\nworkers = 2\n\n[clock]\nlocal-stratum = 99\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("line 5: `clock.local-stratum`"), "{err}");
    // The second [[upstream]] entry's key, not the first one's.
    let text = "[[upstream]]\naddress = \"a\"\nmin-poll = 3\n[[upstream]]\n\
                address = \"b\"\nmin-poll = 30\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("line 6: `upstream.min-poll`"), "{err}");
    // A key left at its default: the line of its section.
    let text = "[server]\nworkers = 1\n[clock]\nstep-threshold = 2000\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("line 3: `clock.panic-threshold`"), "{err}");
    let text = "[clock]\nstep-threshold = 5\n";
    let err = parse(&format!("{text}panic-threshold = 2\n")).unwrap_err();
    assert!(err.to_string().contains("line 3:"), "{err}");
}

#[test]
fn a_drift_file_outside_kernel_mode_is_a_warning() {
    let c = parse("[clock]\ndrift-file = \"/var/lib/fastntpd/drift\"\n").unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("only used with discipline = \"kernel\""),
        "{w:?}"
    );
    let c = parse("[clock]\ndiscipline = \"kernel\"\ndrift-file = \"/x\"\n").unwrap();
    assert!(c.warnings().is_empty());
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/fastntpd.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/fastntpd.toml"));
}

#[test]
fn an_endless_file_is_refused_with_its_size_limit() {
    let err = Config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn access_and_rate_limit_parse_into_the_policy() {
    use crate::policy::{Access, DenyAction};
    let c = parse(
        r#"
        [access]
        default = "deny"
        allow = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
        deny = ["192.0.2.128/25"]
        deny-action = "kod"
        [rate-limit]
        enabled = true
        interval = 0.5
        burst = 4
        leak = 3
        kod = true
        ipv4-prefix = 20
        ipv6-prefix = 56
        clients = 4096
        "#,
    )
    .unwrap();
    let rules = c.access.rules();
    assert_eq!(rules.default, Access::Deny);
    assert_eq!(rules.allow.len(), 3);
    assert_eq!(rules.allow[2].to_string(), "198.51.100.7/32");
    assert_eq!(rules.deny[0].to_string(), "192.0.2.128/25");
    assert_eq!(c.access.deny_action(), DenyAction::Kod);
    let limit = c.rate_limit.limit().unwrap();
    assert_eq!(limit.interval_nanos, 500_000_000);
    assert_eq!((limit.burst, limit.leak, limit.kod), (4, 3, true));
    assert_eq!(
        (limit.ipv4_prefix, limit.ipv6_prefix, limit.clients),
        (20, 56, 4096)
    );
    assert_eq!(c.rate_limit.table_bytes(), 4096 * 32);
    assert_eq!(
        c.protection_summary(),
        "access: 3 allow and 1 deny prefixes, default deny, denied clients get a KoD DENY; \
         rate limit: burst 4 then one per 0.5 s per client (/20 IPv4, /56 IPv6), 1 in 8 over \
         it answered with a KoD RATE, 4096 clients remembered"
    );
    assert_eq!(
        parse("").unwrap().protection_summary(),
        "access: everyone allowed; no rate limit"
    );
    // A whole /20 as one client is allowed, with a warning.
    assert!(c.warnings().iter().any(|w| w.contains("a whole network")));
}

#[test]
fn protection_defaults_serve_everyone_without_limits() {
    let c = parse("").unwrap();
    assert_eq!(c.access, AccessConfig::default());
    assert!(c.access.rules().allow.is_empty());
    assert_eq!(c.rate_limit.limit(), None);
    let on = parse("[rate-limit]\nenabled = true").unwrap();
    let limit = on.rate_limit.limit().unwrap();
    assert_eq!(limit.interval_nanos, 8_000_000_000);
    assert_eq!((limit.burst, limit.leak, limit.kod), (8, 2, false));
    assert_eq!((limit.ipv4_prefix, limit.ipv6_prefix), (32, 64));
    assert_eq!(limit.clients, 1 << 20);
    assert!(on.warnings().is_empty());
}

#[test]
fn bad_prefixes_and_limits_name_their_key_and_line() {
    let err = parse("[access]\nallow = [\n  \"10.0.0.0/8\",\n  \"192.0.2.1/24\",\n]")
        .unwrap_err()
        .to_string();
    // The TOML reader places it at its list.
    assert!(err.contains("line 2"), "{err}");
    assert!(
        err.contains("`192.0.2.1/24` has host bits set after /24: did you mean 192.0.2.0/24?"),
        "{err}"
    );
    let err = parse("[access]\ndeny = [\"office\"]")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`office` is not an IPv4 or IPv6 address"),
        "{err}"
    );
    let err = parse("[access]\ndeny-action = \"reject\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ignore") && err.contains("kod"), "{err}");
    for (text, key, allowed) in [
        (
            "interval = 0",
            "rate-limit.interval",
            "from 0.000001 to 4096",
        ),
        ("burst = 0", "rate-limit.burst", "1 to 65536"),
        ("leak = 17", "rate-limit.leak", "0 to 16"),
        ("ipv4-prefix = 33", "rate-limit.ipv4-prefix", "0–32"),
        ("ipv6-prefix = 129", "rate-limit.ipv6-prefix", "0–128"),
        (
            "clients = 8",
            "rate-limit.clients",
            "16 to 67108864 (32 bytes each)",
        ),
    ] {
        let err = parse(&format!("[rate-limit]\nenabled = true\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("line 3: `{key}`")), "{err}");
        assert!(err.contains(allowed), "{err}");
    }
}

#[test]
fn protection_that_serves_no_one_or_everyone_is_a_warning() {
    let w = parse("[access]\ndefault = \"deny\"").unwrap().warnings();
    assert!(
        w.iter().any(|w| w.contains("no client will be served")),
        "{w:?}"
    );
    let w = parse("[access]\ndeny-action = \"kod\"").unwrap().warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("every request from a denied client")),
        "{w:?}"
    );
    let w = parse("[rate-limit]\nenabled = true\nleak = 0")
        .unwrap()
        .warnings();
    assert!(w.iter().any(|w| w.contains("still answered")), "{w:?}");
}
