//! `--json` holds every figure the table prints, for every sweep step, and
//! `--plot` writes an SVG that parses and carries every series.

mod common;

use std::time::Duration;

use common::{read_json, run_loadgen, text, FakeServer, TempDir};
use serde_json::Value;

/// The numbers in a table line, in order (thousands separators removed).
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';')
        .map(|w| w.trim_end_matches(',').replace(',', ""))
        .filter_map(|w| w.parse::<f64>().ok())
        .collect()
}

fn line<'a>(table: &'a str, prefix: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{table}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(printed: f64, json: f64, decimals: i32) -> bool {
    (printed - json).abs() <= 0.5 * 10f64.powi(-decimals) + 1e-9
}

#[test]
fn json_holds_every_table_figure_and_the_plot_has_every_series() {
    let dir = TempDir::new("output");
    let json = dir.join("sweep.json");
    let svg = dir.join("sweep.svg");
    let server = FakeServer::good(Duration::from_secs(60));
    let out = run_loadgen(
        &[
            &server.addr.to_string(),
            "--sweep",
            "--start-rate",
            "200",
            "--step-factor",
            "2",
            "--max-rate",
            "800",
            "--duration",
            "0.4",
            "--clients",
            "2",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    server.stop();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let j = read_json(&json);

    // Every sweep step is in the JSON, with the figures of its table row.
    let steps = j["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{stdout}");
    for (st, rate) in steps.iter().zip([200.0, 400.0, 800.0]) {
        assert_eq!(f(&st["offered_rate"]), rate);
        let row = stdout
            .lines()
            .find(|l| {
                numbers(l).first() == Some(&(st["step"].as_u64().unwrap() as f64))
                    && l.contains("ramp")
            })
            .unwrap_or_else(|| panic!("no row for step {}", st["step"]));
        let v = numbers(row);
        // step, offered, achieved, sent, valid%, lost%, late, invalid, KoD, dup,
        // θp50, θp99, δp50, δp99, kernel out diff, drops
        assert_eq!(v.len(), 16, "{row}");
        assert_eq!(v[1], f(&st["offered_rate"]).round());
        assert_eq!(v[2], f(&st["achieved_rate"]).round());
        assert_eq!(v[3], f(&st["requests"]["sent"]));
        assert!(close(v[4], f(&st["shares"]["valid_pct"]), 3));
        assert!(close(v[5], f(&st["shares"]["lost_pct"]), 3));
        assert_eq!(v[6], f(&st["requests"]["late"]));
        assert_eq!(v[7], f(&st["requests"]["invalid"]));
        assert_eq!(v[8], f(&st["requests"]["kod"]));
        assert_eq!(v[9], f(&st["other_datagrams"]["duplicates"]));
        assert!(close(v[10], f(&st["theta_us"]["p50_us"]), 3));
        assert!(close(v[11], f(&st["theta_us"]["p99_us"]), 3));
        assert!(close(v[12], f(&st["rtt_us"]["p50_us"]), 3));
        assert!(close(v[13], f(&st["rtt_us"]["p99_us"]), 3));
        assert!(close(v[14], f(&st["kernel"]["out_diff_pct"]), 2));
        assert_eq!(v[15], f(&st["own_receive_drops"]));
        assert_eq!(st["outcome"], "pass");
    }
    assert_eq!(j["sweep"]["max_rate_ok"], 800.0);
    assert_eq!(j["sweep"]["stop_reason"], "reached_max_rate");
    assert_eq!(j["sweep"]["limit_found"], false);
    assert!(stdout.contains("at least 800 req/s"), "{stdout}");

    // The detail block of the best step: every printed figure is in the JSON.
    let best = &steps[2];
    let detail = &stdout[stdout.find("in detail").expect("detail block")..];
    let v = numbers(line(detail, "rate"));
    assert_eq!(v[0], f(&best["offered_rate"]).round());
    assert_eq!(v[1], f(&best["achieved_rate"]).round());
    assert!(close(v[2], f(&best["achieved_pct"]), 2));
    assert!(close(v[3], f(&best["send_window_s"]), 3));
    assert_eq!(
        numbers(line(detail, "requests sent"))[0],
        f(&best["requests"]["sent"])
    );
    for (label, count, share) in [
        ("valid", "valid", "valid_pct"),
        ("late", "late", "late_pct"),
        ("lost", "lost", "lost_pct"),
        ("invalid", "invalid", "invalid_pct"),
        ("KoD", "kod", "kod_pct"),
    ] {
        let v = numbers(line(detail, label));
        assert_eq!(v[0], f(&best["requests"][count]), "{label}");
        assert!(close(v[1], f(&best["shares"][share]), 3), "{label}");
    }
    let v = numbers(line(detail, "datagrams read"));
    let o = &best["other_datagrams"];
    assert_eq!(
        v,
        [
            "received",
            "duplicates",
            "unmatched",
            "stale",
            "wrong_source",
            "malformed"
        ]
        .map(|k| f(&o[k]))
    );
    assert_eq!(
        numbers(line(detail, "own receive drops")),
        [f(&best["own_receive_drops"])]
    );
    let v = numbers(line(detail, "sending"));
    let s = &best["send"];
    assert_eq!(v[0], f(&s["calls"]));
    assert!(close(v[1], f(&s["mean_batch"]), 1));
    assert_eq!(v[2], f(&s["buffer_full"]));
    assert_eq!(v[3], f(&s["refused"]));
    assert!(close(v[4], f(&s["max_lag_ms"]), 3));
    assert_eq!(v[5], f(&s["recv_calls"]));
    let v = numbers(line(detail, "load threads"));
    assert!(close(v[0], f(&s["thread_cpu_pct"]), 1));
    assert_eq!(v[1], f(&s["preempted"]));
    let v = numbers(line(detail, "stamps"));
    assert_eq!(
        v,
        [
            "rx_missing",
            "tx_used",
            "tx_missing",
            "tx_unmatched",
            "negative_rtt"
        ]
        .map(|k| f(&best["stamps"][k]))
    );
    for (label, key) in [
        ("offset θ", "theta_us"),
        ("round trip δ", "rtt_us"),
        ("server T3−T2", "residence_us"),
        ("reply wait T4−T1", "wait_us"),
    ] {
        let v = numbers(line(detail, label));
        let p = &best[key];
        assert_eq!(v[0], f(&p["count"]), "{label}");
        for (i, k) in [
            "min_us",
            "p1_us",
            "p50_us",
            "p99_us",
            "max_us",
            "abs_p99_us",
            "max_abs_us",
        ]
        .iter()
        .enumerate()
        {
            assert!(close(v[i + 1], f(&p[k]), 3), "{label} {k}");
        }
    }
    let k = &best["kernel"];
    let v = numbers(line(detail, "OutDatagrams"));
    assert_eq!(v[0], f(&k["delta"]["out_datagrams"]));
    assert_eq!(v[1], f(&k["expected_out"]));
    assert!(close(v[2], f(&k["out_diff_pct"]), 3));
    let v = numbers(line(detail, "InDatagrams+RcvbufErrors"));
    assert_eq!(
        v[0],
        f(&k["delta"]["in_datagrams"]) + f(&k["delta"]["rcvbuf_errors"])
    );
    assert_eq!(v[1], f(&k["expected_in"]));
    assert!(close(v[2], f(&k["in_diff_pct"]), 3));
    let v = numbers(line(detail, "RcvbufErrors"));
    let d = &k["delta"];
    assert_eq!(
        v,
        [
            "rcvbuf_errors",
            "sndbuf_errors",
            "no_ports",
            "in_errors",
            "mem_errors",
            "in_csum_errors"
        ]
        .map(|x| f(&d[x]))
    );
    assert_eq!(
        numbers(line(detail, "dropped at the server"))[0],
        f(&k["server_buffer_drops"])
    );
    // The header's settings too.
    let c = &j["config"];
    assert_eq!(c["clients"], 2);
    assert_eq!(c["threads"], 1);
    assert_eq!(c["max_batch"], 64);
    assert!(f(&c["recv_buffer_bytes"]) > 0.0);
    assert_eq!(c["timeout_s"], 1.0);
    assert!(j["t1_source"].as_str().unwrap().contains("send call"));
    assert_eq!(c["send_method"], "udp-gso");
    assert!(j["t4_source"]
        .as_str()
        .unwrap()
        .contains("RX software timestamp"));

    // The SVG parses and holds every series, with a line per series.
    let text = std::fs::read_to_string(&svg).expect("svg written");
    let doc = roxmltree::Document::parse(&text).expect("svg parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    for series in ntp_loadgen::plot::SERIES {
        assert!(
            texts.iter().any(|t| t == series),
            "no legend {series:?} in {texts:?}"
        );
    }
    for axis in [
        "valid replies (%)",
        "offset θ (µs)",
        "round trip δ (µs)",
        "offered rate (req/s)",
    ] {
        assert!(texts.iter().any(|t| t == axis), "no axis label {axis:?}");
    }
    let lines: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter(|n| {
            n.attribute("points")
                .is_some_and(|p| p.split_whitespace().count() == 3)
        })
        .collect();
    assert!(
        lines.len() >= ntp_loadgen::plot::SERIES.len(),
        "{} three-point lines",
        lines.len()
    );
    let circles = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .count();
    assert!(
        circles >= 3 * ntp_loadgen::plot::SERIES.len(),
        "{circles} points"
    );
}
