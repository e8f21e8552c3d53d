//! The table on stdout: the header (what was run and how it measures) and
//! the run's layout — the one step of a fixed run, or a sweep's table,
//! result and best step in detail —, and the number formats they share.

use std::fmt::Write as _;

use super::{render_step, render_sweep_summary, render_sweep_table, RunReport};

impl RunReport {
    /// The header lines: what was run and how it measures.
    pub fn render_header(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let cores: Vec<String> = c
            .thread_cores
            .iter()
            .map(|core| core.map_or("unpinned".to_owned(), |n| n.to_string()))
            .collect();
        let _ = writeln!(
            s,
            "ntp-loadgen {} → {} ({}), NTPv{}, {} thread{} (core {}), {} client socket{}{}",
            self.version,
            self.target,
            self.target_addr,
            c.ntp_version,
            c.threads,
            if c.threads == 1 { "" } else { "s" },
            cores.join(", "),
            group(c.clients as u64),
            if c.clients == 1 { "" } else { "s" },
            match &c.source_range {
                Some(r) => format!(" from {} addresses of {r}", group(c.source_addresses)),
                None => String::new(),
            },
        );
        let _ = writeln!(
            s,
            "receive buffer {} KiB per socket{}; batches of up to {} sent by {}, replies awaited by {}; timeout {} s (late after it, lost after {} s)",
            c.recv_buffer_bytes / 1024,
            if c.recv_buffer_forced { " (forced)" } else { "" },
            c.max_batch,
            c.send_method,
            c.wait_method,
            c.timeout_s,
            2.0 * c.timeout_s,
        );
        let _ = writeln!(s, "T1: {}", self.t1_source);
        let _ = writeln!(s, "T4: {}", self.t4_source);
        if c.accept_unsynchronized {
            let _ = writeln!(
                s,
                "--accept-unsynchronized: replies whose only fault is an unsynchronized server \
                 (LI 3, stratum 16, or stratum 0 with INIT/STEP) count as valid, and are counted apart"
            );
        }
        if let (Some(classes), Some(junk_rate)) = (&c.junk_classes, c.junk_rate) {
            let _ = writeln!(
                s,
                "junk flood: {} at {}/s in total for {} s from {} sockets on its own thread ({}); replies to it are counted",
                classes.join(","),
                rate(junk_rate),
                c.junk_duration_s.unwrap_or(c.duration_s),
                c.junk_sockets.unwrap_or(0),
                c.junk_core.map_or("unpinned".to_owned(), |n| format!("core {n}")),
            );
        }
        s
    }

    /// The full table: header, then the step (fixed run) or the sweep
    /// table, its result and the details of its best step.
    pub fn render(&self) -> String {
        let mut s = self.render_header();
        s.push('\n');
        match &self.sweep {
            None => {
                if let Some(step) = self.steps.first() {
                    s.push_str(&render_step(step, self.local_target));
                }
            }
            Some(sum) => {
                s.push_str(&render_sweep_table(&self.steps));
                s.push('\n');
                s.push_str(&render_sweep_summary(sum, &self.steps));
                if let Some(best) = sum
                    .max_rate_step
                    .and_then(|n| self.steps.iter().find(|st| st.step == n))
                {
                    let _ = writeln!(s, "\nstep {} in detail:", best.step);
                    s.push_str(&render_step(best, self.local_target));
                }
            }
        }
        if self.interrupted {
            s.push_str("\ninterrupted: sending stopped early; the figures cover what was sent\n");
        }
        s
    }
}

/// A count with thousands separators.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A rate, rounded, with thousands separators.
pub(super) fn rate(r: f64) -> String {
    group(r.round() as u64)
}

/// Microseconds to the nanosecond, or `-` when there are none.
pub(super) fn us(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.3}"))
}

/// `name count, name count, …` of the non-zero counts.
pub(super) fn counts_list<'a, K: std::fmt::Display>(
    counts: impl IntoIterator<Item = (K, &'a u64)>,
) -> String {
    counts
        .into_iter()
        .filter(|(_, &n)| n > 0)
        .map(|(k, n)| format!("{k} {}", group(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_group_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn counts_list_names_the_non_zero_ones() {
        let counts = [
            ("bad_mode", 1_500u64),
            ("bad_version", 0),
            ("root_distance", 2),
        ];
        assert_eq!(
            counts_list(counts.iter().map(|(k, n)| (k, n))),
            "bad_mode 1,500, root_distance 2"
        );
        assert_eq!(counts_list(std::iter::empty::<(&str, &u64)>()), "");
    }
}
