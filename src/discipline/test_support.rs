//! What the discipline's unit tests share: engine parameters as the
//! built-in `[clock]` defaults give them, and the replies of a healthy
//! stratum-1 upstream.

use super::engine::{ClockMode, EngineParams};
use crate::proto::{Header, LeapIndicator, Mode, NtpShort, NtpTimestamp, RefId};

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

/// A stratum-1 (GPS) server's reply to `request`, received at `receive`
/// and sent 10 µs later, changed by `edit` before encoding.
pub(crate) fn primary_reply(
    request: &[u8; 48],
    receive: NtpTimestamp,
    edit: impl FnOnce(&mut Header),
) -> [u8; 48] {
    let req = Header::parse(request).expect("request parses");
    let mut h = Header {
        leap: LeapIndicator::NoWarning,
        version: 4,
        mode: Mode::Server.to_bits(),
        stratum: 1,
        poll: req.poll,
        precision: -20,
        root_delay: NtpShort::ZERO,
        root_dispersion: NtpShort::from_secs_f64(0.0001),
        reference_id: RefId(*b"GPS\0"),
        reference_ts: receive.add_secs(-10.0),
        origin_ts: req.transmit_ts,
        receive_ts: receive,
        transmit_ts: receive.add_secs(0.00001),
    };
    edit(&mut h);
    let mut out = [0u8; 48];
    h.write(&mut out);
    out
}
