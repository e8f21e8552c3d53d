//! The detailed block of one step in the table: rate, requests by
//! outcome with their breakdowns, other datagrams, sending, stamps, the
//! percentiles, the kernel's counters against ours, the junk flood's line,
//! the timeline and the result line(s).

use std::fmt::Write as _;

use super::text::{counts_list, group, rate, us};
use super::{verdict, JunkReport, StepReport, TimelineReport};

/// The detailed block of one step.
pub fn render_step(st: &StepReport, local_target: bool) -> String {
    let mut s = String::new();
    let r = &st.requests;
    let sh = &st.shares;
    let _ = writeln!(
        s,
        "rate           offered {} req/s, achieved {} req/s ({:.2} %) over {:.3} s",
        rate(st.offered_rate),
        rate(st.achieved_rate),
        st.achieved_pct,
        st.send_window_s
    );
    let _ = writeln!(
        s,
        "requests sent  {:>12}{}",
        group(r.sent),
        if r.send_errors > 0 {
            format!("   (send errors {})", group(r.send_errors))
        } else {
            String::new()
        }
    );
    let line = |s: &mut String, label: &str, n: u64, p: f64, extra: String| {
        let _ = writeln!(s, "  {label:<13}{:>12}  {p:>8.3} %{extra}", group(n));
    };
    line(
        &mut s,
        "valid",
        r.valid,
        sh.valid_pct,
        if r.valid_unsynchronized > 0 {
            format!(
                "   (of which {} unsynchronized, counted by --accept-unsynchronized)",
                group(r.valid_unsynchronized)
            )
        } else {
            String::new()
        },
    );
    line(&mut s, "late", r.late, sh.late_pct, String::new());
    line(&mut s, "lost", r.lost, sh.lost_pct, String::new());
    // Every kiss code counted was seen at least once: the filter of zero
    // counts leaves them all.
    let breakdown = |list: String| {
        if list.is_empty() {
            list
        } else {
            format!("   ({list})")
        }
    };
    line(
        &mut s,
        "invalid",
        r.invalid,
        sh.invalid_pct,
        breakdown(counts_list(&st.invalid_by_reason)),
    );
    line(
        &mut s,
        "KoD",
        r.kod,
        sh.kod_pct,
        breakdown(counts_list(&st.kod_by_code)),
    );
    let o = &st.other_datagrams;
    let _ = writeln!(
        s,
        "datagrams read {:>12}   duplicates {}, unmatched origin {}, stale {}, wrong source {}, malformed {}",
        group(o.received),
        group(o.duplicates),
        group(o.unmatched),
        group(o.stale),
        group(o.wrong_source),
        group(o.malformed)
    );
    let _ = writeln!(
        s,
        "own receive drops (SO_RXQ_OVFL/SO_MEMINFO) {}",
        group(st.own_receive_drops)
    );
    let sd = &st.send;
    let _ = writeln!(
        s,
        "sending        {} {} calls, mean batch {:.1}, buffer full {}, refused {}, max lag {:.3} ms; {} recvmmsg calls",
        group(sd.calls),
        sd.method,
        sd.mean_batch,
        group(sd.buffer_full),
        group(sd.refused),
        sd.max_lag_ms,
        group(sd.recv_calls)
    );
    let _ = writeln!(
        s,
        "load threads   CPU {:.1} % of the send window, preempted {} times",
        sd.thread_cpu_pct,
        group(sd.preempted)
    );
    let ts = &st.stamps;
    let _ = writeln!(
        s,
        "stamps         RX missing {}; TX used {}, missing {}, unmatched {}; negative round trips {}{}",
        group(ts.rx_missing),
        group(ts.tx_used),
        group(ts.tx_missing),
        group(ts.tx_unmatched),
        group(ts.negative_rtt),
        if ts.negative_rtt > 0 {
            " (server T3−T2 longer than the whole round trip: its stamps are off)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "\n{:<16}{:>10}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}   (µs)",
        "", "count", "min", "p1", "p50", "p99", "max", "p99|x|", "max|x|"
    );
    for (label, p) in [
        ("offset θ", &st.theta_us),
        ("round trip δ", &st.rtt_us),
        ("server T3−T2", &st.residence_us),
        ("reply wait T4−T1", &st.wait_us),
    ] {
        let _ = writeln!(
            s,
            "{label:<16}{:>10}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}",
            group(p.count),
            us(p.min_us),
            us(p.p1_us),
            us(p.p50_us),
            us(p.p99_us),
            us(p.max_us),
            us(p.abs_p99_us),
            us(p.max_abs_us)
        );
    }
    if let Some(k) = &st.kernel {
        let d = &k.delta;
        let scope = if local_target {
            "host-wide, both directions on loopback"
        } else {
            "host-wide"
        };
        let _ = writeln!(s, "\nkernel UDP counters (Δ over the step, {scope}):");
        let _ = writeln!(
            s,
            "  OutDatagrams            {:>12}   ours {:>12}  {:+.3} %",
            group(d.out_datagrams),
            group(k.expected_out),
            k.out_diff_pct
        );
        let _ = writeln!(
            s,
            "  InDatagrams+RcvbufErrors{:>12}   ours {:>12}  {:+.3} %",
            group(d.in_datagrams + d.rcvbuf_errors),
            group(k.expected_in),
            k.in_diff_pct
        );
        let _ = writeln!(
            s,
            "  RcvbufErrors {}, SndbufErrors {}, NoPorts {}, InErrors {}, MemErrors {}, InCsumErrors {}",
            group(d.rcvbuf_errors),
            group(d.sndbuf_errors),
            group(d.no_ports),
            group(d.in_errors),
            group(d.mem_errors),
            group(d.in_csum_errors)
        );
        if let Some(server) = k.server_buffer_drops {
            let _ = writeln!(
                s,
                "  dropped at the server's full buffer (RcvbufErrors − ours): {}",
                group(server)
            );
        }
        let sends = if st.send.method == "udp-gso" {
            "GSO sends (OutDatagrams counts one per send)"
        } else {
            "requests sent"
        };
        let junk = if st.junk.is_some() {
            " + junk messages (a GSO message counts once)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  (ours: out = {sends}{junk}{}; in = {}{})",
            if local_target {
                " + replies read + replies dropped at our sockets"
            } else {
                ""
            },
            if local_target {
                "requests sent + replies read + replies dropped at our sockets"
            } else {
                "replies read + replies dropped at our sockets"
            },
            if st.junk.is_some() && local_target {
                " + junk sent"
            } else {
                ""
            }
        );
    }
    if let Some(j) = &st.junk {
        s.push_str(&j.render());
    }
    if let Some(t) = &st.timeline {
        s.push_str(&timeline_line(t));
    }
    let _ = writeln!(s, "\nresult: {}", verdict(st));
    if let Some(warning) = st.junk.as_ref().and_then(JunkReport::verdict) {
        let _ = writeln!(s, "junk:   {warning}");
    }
    s
}

/// The table's line of a timeline.
fn timeline_line(t: &TimelineReport) -> String {
    let cells: Vec<String> = t
        .valid_pct
        .iter()
        .map(|p| p.map_or("-".to_owned(), |p| format!("{p:.1}")))
        .collect();
    format!(
        "timeline       valid % per {} s of send time: {}\n",
        t.interval_s,
        cells.join(" ")
    )
}

impl JunkReport {
    /// The one "junk" line of the table.
    pub fn render(&self) -> String {
        let mut s = format!(
            "junk           {} sent ({}) at {}/s of {}/s offered ({:.2} %) from {} sockets, \
             {} sendmmsg calls ({} of {} classes as GSO batches), buffer full {}, refused {}, \
             thread CPU {:.1} %; replies to junk {}",
            group(self.sent),
            self.classes.join(","),
            rate(self.rate_achieved),
            rate(self.rate_offered),
            self.achieved_pct,
            self.sockets,
            group(self.send_calls),
            self.gso_classes,
            self.classes.len(),
            group(self.buffer_full),
            group(self.refused),
            self.thread_cpu_pct,
            group(self.replies),
        );
        if self.replies > 0 {
            s.push_str(" (THE SERVER ANSWERED JUNK: amplification)");
        }
        s.push('\n');
        s
    }
}
