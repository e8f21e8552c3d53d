//! The bookkeeping side of a load thread: what one datagram read from a
//! client socket changes. It is matched to its request by the origin
//! timestamp (the slot table), aged against the timeout, judged
//! ([`crate::validate`]) and counted, and a valid one's figures go into the
//! histograms (and the timeline).

use fastntp::clock;
use fastntp::proto::{Header, NtpTimestamp, HEADER_LEN};
use fastntp::sys::cmsg::{self, RECV_CONTROL_LEN};

use super::{ntp_of_ns, unix_ns, EngineConfig};
use crate::batch::{PeerName, RecvBatch, RECV_SLOT};
use crate::matching::{Lookup, SlotTable};
use crate::stats::{Counters, Histograms, Timeline};
use crate::validate::{judge, Sample, Verdict};

/// Everything a reply updates, and what judging it needs.
pub(super) struct Book {
    /// The requests in flight.
    pub(super) table: SlotTable,
    /// The step's counters.
    pub(super) c: Counters,
    /// The step's histograms.
    pub(super) h: Histograms,
    /// The step's timeline, with `--timeline`.
    pub(super) timeline: Option<Timeline>,
    /// NTP version of the requests (replies must echo it).
    version: u8,
    /// Later replies are late.
    timeout_ns: i64,
    /// Later replies are lost (twice the timeout).
    pub(super) late_limit_ns: i64,
    /// T1 should come from a kernel TX stamp.
    pub(super) precise: bool,
    /// Unsynchronized but otherwise valid replies count as valid.
    accept_unsynchronized: bool,
    /// The target, as the kernel names senders.
    peer: PeerName,
}

impl Book {
    /// An empty book for `cfg`.
    pub(super) fn new(cfg: &EngineConfig) -> Book {
        let timeout_ns = cfg.timeout.as_nanos().min(i64::MAX as u128 / 4) as i64;
        Book {
            table: SlotTable::new(cfg.table_slots),
            c: Counters::default(),
            h: Histograms::default(),
            timeline: None,
            version: cfg.version,
            timeout_ns,
            late_limit_ns: 2 * timeout_ns,
            precise: cfg.precise_tx,
            accept_unsynchronized: cfg.accept_unsynchronized,
            peer: PeerName::of(cfg.target),
        }
    }

    /// Counts a valid reply (`unsynchronized`: accepted as such) to a
    /// request sent at `t1_ns`.
    #[inline]
    fn valid(&mut self, sample: &Sample, t1_ns: i64, unsynchronized: bool) {
        let c = &mut self.c;
        c.valid += 1;
        c.valid_unsynchronized += unsynchronized as u64;
        c.negative_rtt += (sample.rtt_ns < 0) as u64;
        self.h.record(sample);
        if let Some(t) = &mut self.timeline {
            t.valid_at(t1_ns);
        }
    }

    /// Accounts for datagram `i` of `batch`, read from socket `s`. Returns
    /// the socket's drop count if the kernel reported one.
    #[inline]
    pub(super) fn on_datagram(
        &mut self,
        s: usize,
        batch: &RecvBatch<RECV_SLOT, RECV_CONTROL_LEN>,
        i: usize,
    ) -> Option<u32> {
        let c = &mut self.c;
        c.other.received += 1;
        let info = cmsg::parse(batch.control(i));
        let payload = batch.payload(i);
        if payload.len() < HEADER_LEN {
            c.other.malformed += 1;
            return info.rxq_dropped;
        }
        if !batch.from_peer(i, &self.peer) {
            c.other.wrong_source += 1;
            return info.rxq_dropped;
        }
        let mut origin = [0u8; 8];
        origin.copy_from_slice(&payload[24..32]);
        let idx = match self.table.lookup(u64::from_be_bytes(origin), s as u16) {
            Lookup::Outstanding(idx) => idx,
            Lookup::NoMatch => {
                c.other.unmatched += 1;
                return info.rxq_dropped;
            }
            Lookup::Answered => {
                c.other.duplicates += 1;
                return info.rxq_dropped;
            }
            Lookup::Lost => {
                c.other.stale += 1;
                return info.rxq_dropped;
            }
        };
        let t4 = match info.rx_stamp {
            Some(t) => t,
            None => {
                c.missing_rx_stamps += 1;
                clock::now()
            }
        };
        let slot = *self.table.slot(idx);
        if self.precise {
            if slot.precise {
                c.tx_stamps_used += 1;
            } else {
                c.tx_stamps_missing += 1;
            }
        }
        let age = unix_ns(t4) - slot.t1_ns;
        if age > self.late_limit_ns {
            self.table.give_up(idx);
            c.lost += 1;
            c.other.stale += 1;
            return info.rxq_dropped;
        }
        self.table.answer(idx);
        if age > self.timeout_ns {
            c.late += 1;
            return info.rxq_dropped;
        }
        let Ok(h) = Header::parse(payload) else {
            c.other.malformed += 1;
            return info.rxq_dropped;
        };
        match judge(
            &h,
            self.version,
            ntp_of_ns(slot.t1_ns),
            NtpTimestamp::from_unix(t4),
            self.accept_unsynchronized,
        ) {
            Verdict::Valid(sample) => self.valid(&sample, slot.t1_ns, false),
            Verdict::Unsynchronized(sample) => self.valid(&sample, slot.t1_ns, true),
            Verdict::Kod(code) => c.kod.add(code),
            Verdict::Invalid(why) => c.invalid[why.index()] += 1,
        }
        info.rxq_dropped
    }
}
