//! What the discipline's unit tests share: engine parameters as the
//! built-in `[clock]` defaults give them, and the replies of a healthy
//! stratum-1 upstream.

use super::engine::{ClockMode, EngineParams};
use testkit::packet::{short_from_secs, Reply};

use crate::proto::{Header, NtpTimestamp};

/// The engine parameters of the `[clock]` defaults in `mode` (step at
/// 128 ms, refuse beyond 1000 s except at first, no local stratum), for a
/// clock of 2^-20 s precision starting from 0 ppm, with upstreams.
pub(crate) fn engine_params(mode: ClockMode) -> EngineParams {
    EngineParams {
        mode,
        step_threshold: 0.128,
        panic_threshold: 1000.0,
        first_step_unlimited: true,
        local_stratum: None,
        precision: -20,
        base_ppm: 0.0,
        has_upstreams: true,
    }
}

/// A stratum-1 (GPS) server's reply to `request` (the one reply builder
/// of both test suites, `testkit`'s), received at `receive` and sent 10 µs
/// later, changed by `edit` before encoding.
pub(crate) fn primary_reply(
    request: &[u8; 48],
    receive: NtpTimestamp,
    edit: impl FnOnce(&mut Header),
) -> [u8; 48] {
    let wire = Reply {
        root_dispersion: short_from_secs(0.0001),
        reference: receive.add_secs(-10.0).to_bits(),
        transmit: receive.add_secs(0.00001).to_bits(),
        ..Reply::answering(request, receive.to_bits())
    }
    .bytes();
    let mut h = Header::parse(&wire).expect("a built reply parses");
    edit(&mut h);
    let mut out = [0u8; 48];
    h.write(&mut out);
    out
}
