//! The reply pipeline: request bytes, their sender, their receive time,
//! the published [`ServerState`] and the worker's [`Policy`] in; a 48-byte
//! mode-4 reply, a kiss-o'-death or a drop verdict with its reason out.
//! Checks run cheapest first, as chrony's: length → access → mode →
//! framing → rate limit → reply, so junk and denied clients cost almost
//! nothing. A reply is built once by [`respond`] and stamped once by
//! [`stamp_transmit`] just before it is sent (a batch is built first and
//! each reply stamped with its own predicted departure). Pure: the caller
//! supplies every time.

use std::net::IpAddr;

use super::packet::{
    validate_request, Header, LeapIndicator, Mode, PacketError, RefId, HEADER_LEN,
};
use super::state::ServerState;
use super::time::{NtpShort, NtpTimestamp, UnixTime};
use crate::policy::{Access, Policy, Rate};

/// Why a datagram got no reply. Every reason is counted by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the 48-byte header.
    TooShort,
    /// Not a multiple of 4 bytes long.
    BadLength,
    /// Version outside 1–4.
    UnsupportedVersion,
    /// Any mode other than 3 (client): never answered, so the server cannot
    /// be used to amplify or to loop with another server.
    NotClientMode,
    /// Bytes after the header are neither extension fields nor a MAC.
    MalformedExtension,
    /// Larger than the receive buffer (the I/O layer reports it; `respond`
    /// never sees such a datagram whole).
    Oversize,
    /// Waited in the receive queue longer than the server's queue-delay
    /// limit (the I/O layer decides, from the kernel receive timestamp):
    /// under overload, answering it would only delay the fresh requests
    /// behind it, and its client has likely given up.
    Stale,
    /// From a client the access list denies (and no KoD DENY is due).
    Denied,
    /// Over its client's rate limit (and not one of the let-through ones).
    RateLimited,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 9] = [
        DropReason::TooShort,
        DropReason::BadLength,
        DropReason::UnsupportedVersion,
        DropReason::NotClientMode,
        DropReason::MalformedExtension,
        DropReason::Oversize,
        DropReason::Stale,
        DropReason::Denied,
        DropReason::RateLimited,
    ];

    /// Position in [`DropReason::ALL`], for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short snake_case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::BadLength => "bad_length",
            DropReason::UnsupportedVersion => "bad_version",
            DropReason::NotClientMode => "not_client_mode",
            DropReason::MalformedExtension => "malformed_extension",
            DropReason::Oversize => "oversize",
            DropReason::Stale => "stale",
            DropReason::Denied => "denied",
            DropReason::RateLimited => "rate_limited",
        }
    }
}

impl From<PacketError> for DropReason {
    fn from(e: PacketError) -> Self {
        match e {
            PacketError::TooShort => DropReason::TooShort,
            PacketError::BadLength => DropReason::BadLength,
            PacketError::UnsupportedVersion => DropReason::UnsupportedVersion,
            PacketError::MalformedExtension => DropReason::MalformedExtension,
        }
    }
}

/// The kiss-o'-death codes the server sends (RFC 5905 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kiss {
    /// Access denied: the client should stop asking this server.
    Deny,
    /// Rate exceeded: the client should ask less often.
    Rate,
}

impl Kiss {
    /// Every code, in counter order.
    pub const ALL: [Kiss; 2] = [Kiss::Deny, Kiss::Rate];

    /// Position in [`Kiss::ALL`], for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The code as it travels in the reference ID.
    pub const fn code(self) -> RefId {
        match self {
            Kiss::Deny => RefId::DENY,
            Kiss::Rate => RefId::RATE,
        }
    }

    /// The code as text, for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Kiss::Deny => "DENY",
            Kiss::Rate => "RATE",
        }
    }
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the [`HEADER_LEN`] bytes written into the reply buffer.
    Reply,
    /// Send the kiss-o'-death written into the reply buffer (48 bytes; its
    /// receive and transmit timestamps stay zero: a refused client learns
    /// nothing of the server's time).
    Kod(Kiss),
    /// Send nothing.
    Drop(DropReason),
}

/// Answers one datagram.
///
/// - `request`: the whole datagram as received; `from`: its sender.
/// - `received`: its kernel receive time (on the kernel clock; the state's
///   correction is applied here). It is also the time the rate limit
///   counts with.
/// - `policy`: the worker's access list and rate limiter.
/// - `reply`: where the reply is written on [`Verdict::Reply`] or
///   [`Verdict::Kod`]: every field but the two that depend on the moment it
///   leaves (transmit timestamp, root dispersion), which [`stamp_transmit`]
///   writes; a reply must pass through it before it is sent.
///
/// The reply is always 48 bytes, never longer than the request: extension
/// fields and MACs are skipped, not echoed. No request gets more than one
/// reply, so no client gets more replies than it sent.
pub fn respond(
    request: &[u8],
    from: IpAddr,
    received: UnixTime,
    state: &ServerState,
    policy: &mut Policy,
    reply: &mut [u8; HEADER_LEN],
) -> Verdict {
    let Some(&first) = request.first() else {
        return Verdict::Drop(DropReason::TooShort);
    };
    if request.len() < HEADER_LEN {
        return Verdict::Drop(DropReason::TooShort);
    }
    let denied = policy.access(from) == Access::Deny;
    if denied && !policy.deny_kod() {
        return Verdict::Drop(DropReason::Denied);
    }
    if Mode::from_bits(first) != Mode::Client {
        return Verdict::Drop(if denied {
            DropReason::Denied
        } else {
            DropReason::NotClientMode
        });
    }
    if let Err(e) = validate_request(request) {
        return Verdict::Drop(e.into());
    }
    let req = match Header::parse(request) {
        Ok(h) => h,
        Err(e) => return Verdict::Drop(e.into()),
    };
    let rate = policy.rate(from, received.as_nanos());
    if denied {
        return match rate {
            Rate::Refused => Verdict::Drop(DropReason::Denied),
            Rate::Allowed | Rate::Leaked => kiss(&req, Kiss::Deny, state, reply),
        };
    }
    match rate {
        Rate::Allowed => {}
        Rate::Leaked if policy.rate_kod() => return kiss(&req, Kiss::Rate, state, reply),
        Rate::Leaked => {}
        Rate::Refused => return Verdict::Drop(DropReason::RateLimited),
    }

    let receive_ts = state.correction.apply(NtpTimestamp::from_unix(received));
    let header = Header {
        leap: state.leap,
        version: req.version,
        mode: Mode::Server.to_bits(),
        stratum: state.stratum,
        poll: req.poll,
        precision: state.precision,
        root_delay: state.root_delay,
        root_dispersion: state.root_dispersion,
        reference_id: state.reference_id,
        reference_ts: state.reference_time,
        origin_ts: req.transmit_ts,
        receive_ts,
        // Both written by `stamp_transmit`.
        transmit_ts: receive_ts,
    };
    header.write(reply);
    Verdict::Reply
}

/// Writes a kiss-o'-death with `code` in reply to `req` (RFC 5905 §7.4:
/// stratum 0, the code as reference ID, leap "unsynchronized"); it echoes
/// the request's transmit timestamp so that the client can match it, and
/// says nothing of the server's time.
fn kiss(req: &Header, code: Kiss, state: &ServerState, reply: &mut [u8; HEADER_LEN]) -> Verdict {
    Header {
        leap: LeapIndicator::Unsynchronized,
        version: req.version,
        mode: Mode::Server.to_bits(),
        stratum: 0,
        poll: req.poll,
        precision: state.precision,
        root_delay: NtpShort::default(),
        root_dispersion: NtpShort::default(),
        reference_id: code.code(),
        reference_ts: NtpTimestamp::default(),
        origin_ts: req.transmit_ts,
        receive_ts: NtpTimestamp::default(),
        transmit_ts: NtpTimestamp::default(),
    }
    .write(reply);
    Verdict::Kod(code)
}

/// Completes a reply built by [`respond`] for `transmit` (kernel clock),
/// the moment it is expected to leave: writes its transmit timestamp (with
/// the state's correction; never before the receive timestamp, even if the
/// clock read and the kernel stamp disagree by a few nanoseconds) and the
/// root dispersion at that moment. Stamping again moves only these two. A
/// kiss-o'-death (no receive timestamp) is left as it is.
pub fn stamp_transmit(reply: &mut [u8; HEADER_LEN], state: &ServerState, transmit: UnixTime) {
    let mut receive = [0u8; 8];
    receive.copy_from_slice(&reply[32..40]);
    let receive_ts = NtpTimestamp::from_be_bytes(receive);
    if receive_ts == NtpTimestamp::default() {
        return;
    }
    let mut transmit_ts = state.correction.apply(NtpTimestamp::from_unix(transmit));
    if transmit_ts.diff_units(receive_ts) < 0 {
        transmit_ts = receive_ts;
    }
    reply[8..12].copy_from_slice(
        &state
            .root_dispersion_at(transmit_ts)
            .to_bits()
            .to_be_bytes(),
    );
    reply[40..48].copy_from_slice(&transmit_ts.to_be_bytes());
}

#[cfg(test)]
mod tests;
