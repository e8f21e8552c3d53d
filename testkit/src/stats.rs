//! `fastntpd`'s final per-worker counters, read back from the line each
//! worker logs when it stops (`worker N (core C): received …, KoD DENY d,
//! KoD RATE r`); counters an older build does not log read as 0.

/// One worker's final counters.
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    /// Worker number.
    pub id: usize,
    /// The core it was pinned to, if any.
    pub core: Option<usize>,
    /// Datagrams received.
    pub received: u64,
    /// Replies sent.
    pub replied: u64,
    /// Datagrams dropped, for any reason.
    pub dropped: u64,
    /// Drops by reason, as logged (`too_short=2`).
    pub reasons: Vec<(String, u64)>,
    /// Requests without a kernel receive timestamp.
    pub missing_rx_stamps: u64,
    /// Receive errors the kernel reported.
    pub receive_errors: u64,
    /// io_uring rebuilds.
    pub ring_restarts: u64,
    /// Datagrams the kernel dropped at the worker's full socket buffer.
    pub kernel_drops: u64,
    /// Kiss-o'-death DENY replies sent (to denied clients).
    pub kod_deny: u64,
    /// Kiss-o'-death RATE replies sent (to rate-limited clients).
    pub kod_rate: u64,
}

impl WorkerStats {
    /// Parses a worker's final log line; `None` for any other line.
    pub fn parse(line: &str) -> Option<WorkerStats> {
        let rest = line.split("worker ").nth(1)?;
        let (id, rest) = rest.split_once(" (")?;
        let (core, rest) = rest.split_once("): ")?;
        let number = |key: &str| -> Option<u64> {
            rest.split(key)
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let mut s = WorkerStats {
            id: id.parse().ok()?,
            core: core.strip_prefix("core ").and_then(|c| c.parse().ok()),
            received: number("received ")?,
            replied: number("replied ")?,
            dropped: number("dropped ")?,
            missing_rx_stamps: number("missing rx stamps ")?,
            receive_errors: number("receive errors ").unwrap_or(0),
            ring_restarts: number("ring restarts ").unwrap_or(0),
            kernel_drops: number("kernel drops ").unwrap_or(0),
            kod_deny: number("KoD DENY ").unwrap_or(0),
            kod_rate: number("KoD RATE ").unwrap_or(0),
            reasons: Vec::new(),
        };
        if let Some(inner) = rest.split_once(" (").and_then(|(_, r)| r.split_once(')')) {
            for pair in inner.0.split(", ") {
                let (k, v) = pair.split_once('=')?;
                s.reasons.push((k.to_owned(), v.parse().ok()?));
            }
        }
        Some(s)
    }

    /// Drops counted for `reason` (0 if none).
    pub fn dropped_for(&self, reason: &str) -> u64 {
        self.reasons
            .iter()
            .filter(|(k, _)| k == reason)
            .map(|(_, v)| v)
            .sum()
    }
}

/// Sums the statistics of all workers.
pub fn total(stats: &[WorkerStats]) -> WorkerStats {
    let mut t = WorkerStats::default();
    for s in stats {
        t.received += s.received;
        t.replied += s.replied;
        t.dropped += s.dropped;
        t.missing_rx_stamps += s.missing_rx_stamps;
        t.receive_errors += s.receive_errors;
        t.ring_restarts += s.ring_restarts;
        t.kernel_drops += s.kernel_drops;
        t.kod_deny += s.kod_deny;
        t.kod_rate += s.kod_rate;
        for (k, v) in &s.reasons {
            match t.reasons.iter_mut().find(|(tk, _)| tk == k) {
                Some((_, tv)) => *tv += v,
                None => t.reasons.push((k.clone(), *v)),
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_line_parses_and_sums() {
        let line = "INFO worker 1 (core 3): received 10, replied 7, dropped 3 \
                    (not_client_mode=2, too_short=1), missing rx stamps 1, send errors 0, \
                    receive errors 4, kernel drops 0, re-arms 0, ring restarts 2";
        let s = WorkerStats::parse(line).expect("parses");
        assert_eq!(
            (s.id, s.core, s.received, s.replied, s.dropped),
            (1, Some(3), 10, 7, 3)
        );
        assert_eq!(
            (s.missing_rx_stamps, s.receive_errors, s.ring_restarts),
            (1, 4, 2)
        );
        assert_eq!(s.dropped_for("not_client_mode"), 2);
        let t = total(&[s.clone(), s]);
        assert_eq!((t.received, t.dropped_for("too_short")), (20, 2));
        assert!(WorkerStats::parse("listening on 127.0.0.1:123").is_none());
    }

    #[test]
    fn kiss_o_death_counters_parse_and_read_as_zero_when_missing() {
        let line = "INFO worker 0 (core 1): received 40, replied 9, dropped 21 \
                    (denied=5, rate_limited=16), missing rx stamps 0, send errors 0, \
                    receive errors 0, kernel drops 3, re-arms 0, ring restarts 0, \
                    KoD DENY 4, KoD RATE 6";
        let s = WorkerStats::parse(line).expect("parses");
        assert_eq!((s.kod_deny, s.kod_rate, s.kernel_drops), (4, 6, 3));
        assert_eq!(
            (s.dropped_for("denied"), s.dropped_for("rate_limited")),
            (5, 16)
        );
        let t = total(&[s.clone(), s]);
        assert_eq!((t.kod_deny, t.kod_rate, t.kernel_drops), (8, 12, 6));
        let old = "INFO worker 0 (unpinned): received 1, replied 1, dropped 0, \
                   missing rx stamps 0, send errors 0";
        let o = WorkerStats::parse(old).expect("an older line parses");
        assert_eq!((o.kod_deny, o.kod_rate, o.kernel_drops), (0, 0, 0));
    }
}
