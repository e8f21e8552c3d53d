//! The engine's sources: adding and removing them, the requests due, and
//! what their replies (or kiss codes) bring — a sample on the uncorrected
//! timeline, then a clock update.

use std::net::IpAddr;

use tracing::{debug, info, warn};

use super::{ClockMode, Engine, Now, Request, Slot, SourceId, FIRST_SYNC_WAIT};
use crate::discipline::algo::filter::Sample;
use crate::discipline::reach::Change;
use crate::discipline::source::{Kiss, Measurement, ReplyError, Source, SourceParams};
use crate::discipline::status::Tally;
use crate::proto::NtpTimestamp;

impl Engine {
    /// Adds a source, first polled at once. Sources added before the first
    /// correction, within [`FIRST_SYNC_WAIT`] of the first one and before
    /// any was removed, are the ones the first correction waits for.
    pub fn add_source(&mut self, params: SourceParams, now: &Now) -> SourceId {
        let id = self.next_id;
        self.next_id += 1;
        info!("upstream {} ({}) added", params.addr, params.name);
        let first = *self.first_added.get_or_insert(now.mono);
        let waited_for = !self.corrected && !self.removed_any && now.mono < first + FIRST_SYNC_WAIT;
        let source = Source::new(params, now.mono, self.params.precision);
        self.slots.push(Slot {
            id,
            source,
            tally: Tally::Rejected,
            waited_for,
        });
        self.dirty = true;
        id
    }

    /// Removes a source (a pool member being replaced).
    pub fn remove_source(&mut self, id: SourceId) {
        if let Some(pos) = self.slots.iter().position(|s| s.id == id) {
            let slot = self.slots.remove(pos);
            info!(
                "upstream {} ({}) removed",
                slot.source.addr(),
                slot.source.params().name
            );
            self.removed_any = true;
            self.dirty = true;
        }
    }

    /// The sources, with their ids, in the order they were added.
    pub fn sources(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        self.slots.iter().map(|s| (s.id, &s.source))
    }

    /// Source `id`, if it is still there.
    pub fn source(&self, id: SourceId) -> Option<&Source> {
        self.slots.iter().find(|s| s.id == id).map(|s| &s.source)
    }

    fn slot_mut(&mut self, id: SourceId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    /// Whether source `id` still waits for the reply to its last request
    /// (the caller keeps its socket open until then or a timeout).
    pub fn awaiting_reply(&self, id: SourceId) -> bool {
        self.source(id).is_some_and(Source::awaiting_reply)
    }

    /// Pool members that should be replaced: refused by a kiss code, or
    /// unanswered for their last 8 polls.
    pub fn unusable_pool_members(&self) -> Vec<SourceId> {
        self.slots
            .iter()
            .filter(|s| s.source.params().pool)
            .filter(|s| {
                s.source.refused().is_some() || (!s.source.reachable() && s.source.sent() >= 8)
            })
            .map(|s| s.id)
            .collect()
    }

    /// Requests due at `now`; `random` supplies each transmit timestamp.
    pub fn poll(&mut self, now: &Now, mut random: impl FnMut() -> u64) -> Vec<Request> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            if let Some(packet) = slot.source.transmit(now.mono, random()) {
                out.push(Request {
                    id: slot.id,
                    addr: slot.source.addr(),
                    packet,
                });
            }
        }
        if !out.is_empty() {
            // Reachability changed: see whether anything is still usable.
            self.log_reach_changes();
            self.reassess(now);
        }
        out
    }

    /// Logs the sources that became unreachable or came back, once each.
    fn log_reach_changes(&mut self) {
        for slot in &mut self.slots {
            let addr = slot.source.addr();
            match slot.source.take_reach_change() {
                Some(Change::Unreachable { missed }) => {
                    warn!("upstream {addr} unreachable (no reply to the last {missed} polls)")
                }
                Some(Change::Back) => info!("upstream {addr} reachable again"),
                None => {}
            }
        }
    }

    /// The request of source `id` left at kernel time `t1`, from our
    /// address `local` (if known: it spots upstreams synchronized to us).
    pub fn sent(&mut self, id: SourceId, t1: NtpTimestamp, local: Option<IpAddr>) {
        if let Some(s) = self.slot_mut(id) {
            s.source.sent_at(t1, local);
        }
    }

    /// The kernel's transmit timestamp of source `id`'s request in flight,
    /// which is better than the clock read given to [`Engine::sent`].
    pub fn tx_stamp(&mut self, id: SourceId, t1: NtpTimestamp) {
        if let Some(s) = self.slot_mut(id) {
            s.source.refine_t1(t1);
        }
    }

    /// The request of source `id` could not be sent.
    pub fn send_failed(&mut self, id: SourceId) {
        if let Some(s) = self.slot_mut(id) {
            s.source.forget_request();
        }
    }

    /// A datagram from source `id`, received at kernel time `t4`.
    pub fn receive(
        &mut self,
        id: SourceId,
        bytes: &[u8],
        t4: NtpTimestamp,
        now: &Now,
    ) -> Result<(), ReplyError> {
        let mono = now.mono - now.kernel.diff_secs(t4).max(0.0);
        let slot = self.slot_mut(id).ok_or(ReplyError::UnknownSource)?;
        match slot.source.receive(bytes, t4, mono) {
            Ok(m) => {
                self.add_measurement(id, m);
                self.log_reach_changes();
                for slot in self.slots.iter_mut().filter(|s| s.id != id) {
                    slot.source.note_other_reply(now.mono);
                }
                self.update(now);
                Ok(())
            }
            Err(ReplyError::KissOfDeath(kiss)) => {
                self.kissed(id, kiss, now);
                Err(ReplyError::KissOfDeath(kiss))
            }
            Err(e) => {
                debug!("reply from {} rejected: {e}", slot.source.addr());
                Err(e)
            }
        }
    }

    fn kissed(&mut self, id: SourceId, kiss: Kiss, now: &Now) {
        let Some(source) = self.source(id) else {
            return;
        };
        let addr = source.addr();
        match kiss {
            Kiss::Rate => warn!(
                "upstream {addr} sent KoD RATE: polling it every {} s from now on",
                (source.poll() as f64).exp2()
            ),
            Kiss::Deny | Kiss::Restricted => {
                warn!(
                    "upstream {addr} sent KoD {}: no longer polling it",
                    kiss.code()
                );
                self.reassess(now);
            }
        }
        self.dirty = true;
    }

    /// Adds a measurement to its source's filter, on the uncorrected
    /// timeline: in kernel mode the kernel clock carries our corrections,
    /// so they are added back.
    fn add_measurement(&mut self, id: SourceId, m: Measurement) {
        let traj = self.traj;
        let shift = if self.params.mode == ClockMode::Kernel {
            traj.at(m.mono)
        } else {
            0.0
        };
        if let Some(slot) = self.slot_mut(id) {
            slot.source.add_sample(
                Sample {
                    time: m.mono,
                    offset: m.offset + shift,
                    delay: m.delay,
                    dispersion: m.dispersion,
                },
                traj.freq,
            );
        }
    }
}
