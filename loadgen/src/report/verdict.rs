//! The one-line verdicts: whether a step's figures measure the server (or
//! the load generator was the bottleneck), whether the junk flood fell
//! short of its rate, and why a run that sent requests got not one valid
//! reply (for stderr, with a hint at the likely cause).

use std::collections::BTreeMap;

use super::text::{counts_list, group, rate};
use super::{JunkReport, RunReport, StepReport};

/// One line saying whether the figures measure the server.
pub fn verdict(st: &StepReport) -> String {
    if st.offered_rate == 0.0 {
        "no requests offered (--rate 0: junk flood only)".to_owned()
    } else if st.limited {
        format!(
            "LOAD GENERATOR LIMITED — achieved {} of {} req/s offered ({:.1} %); \
             these figures do not measure the server",
            rate(st.achieved_rate),
            rate(st.offered_rate),
            st.achieved_pct
        )
    } else {
        format!(
            "{:.3} % valid replies at {} req/s offered (achieved {:.2} %)",
            st.shares.valid_pct,
            rate(st.offered_rate),
            st.achieved_pct
        )
    }
}

impl JunkReport {
    /// The warning when the flood fell short, like the load generator's.
    pub fn verdict(&self) -> Option<String> {
        self.limited.then(|| {
            format!(
                "JUNK FLOOD LIMITED — achieved {} of {} junk datagrams/s offered ({:.1} %); \
                 the server saw a weaker flood than asked",
                rate(self.rate_achieved),
                rate(self.rate_offered),
                self.achieved_pct
            )
        })
    }
}

impl RunReport {
    /// Why the run counts as failed although it ran: requests were sent
    /// and not one valid reply came back (in any step). One line, for
    /// stderr; `None` when some reply was valid, nothing was sent, or the
    /// run was interrupted.
    pub fn no_valid_reply(&self) -> Option<String> {
        if self.interrupted {
            return None;
        }
        let mut sent = 0;
        let mut valid = 0;
        let mut lost = 0;
        let mut late = 0;
        let mut refused = 0;
        let mut kod: BTreeMap<&str, u64> = BTreeMap::new();
        let mut invalid: BTreeMap<&str, u64> = BTreeMap::new();
        for st in &self.steps {
            sent += st.requests.sent;
            valid += st.requests.valid;
            lost += st.requests.lost;
            late += st.requests.late;
            refused += st.send.refused;
            for (code, n) in &st.kod_by_code {
                *kod.entry(code).or_default() += n;
            }
            for (why, n) in &st.invalid_by_reason {
                *invalid.entry(why).or_default() += n;
            }
        }
        if sent == 0 || valid > 0 {
            return None;
        }
        let invalid_total: u64 = invalid.values().sum();
        let kod_total: u64 = kod.values().sum();
        let breakdown = if lost == sent {
            "all lost".to_owned()
        } else {
            let mut parts = Vec::new();
            for (n, what) in [(lost, "lost"), (late, "late")] {
                if n > 0 {
                    parts.push(format!("{} {what}", group(n)));
                }
            }
            if invalid_total > 0 {
                parts.push(format!(
                    "{} invalid: {}",
                    group(invalid_total),
                    counts_list(&invalid)
                ));
            }
            if kod_total > 0 {
                parts.push(format!("{} KoD: {}", group(kod_total), counts_list(&kod)));
            }
            parts.join("; ")
        };
        let unsynchronized = invalid.get("unsynchronized").copied().unwrap_or(0)
            + kod.get("INIT").copied().unwrap_or(0)
            + kod.get("STEP").copied().unwrap_or(0);
        let hint = if lost + late == sent {
            if let Some(junk) = self.junk.as_ref().filter(|_| refused == 0) {
                if junk.sent > 0 {
                    "the server answered nothing while the junk flood ran"
                } else {
                    "is an NTP server listening there?"
                }
            } else if refused > 0 {
                "nothing listens there (the host answered ICMP port unreachable)"
            } else {
                "is an NTP server listening there?"
            }
        } else if unsynchronized > 0 {
            "the server says it is not synchronized; --accept-unsynchronized counts such replies for throughput"
        } else if kod_total > 0 {
            "the server refused the requests (kiss-o'-death)"
        } else if late > 0 && invalid_total == 0 {
            "the replies came after --timeout"
        } else {
            "its replies are not valid NTP server replies"
        };
        Some(format!(
            "no valid reply from {} ({} sent, {breakdown}): {hint}",
            self.target_addr,
            group(sent)
        ))
    }
}
