//! The NTP protocol core, sans-IO: bytes and timestamps in, bytes or a
//! verdict out. No syscalls, no clock reads, no allocation, no `unsafe`.
//!
//! - [`time`]: NTP timestamp formats, era handling, POSIX conversion.
//! - [`packet`]: header codec, extension-field and MAC framing.
//! - [`state`]: [`ServerState`], everything a reply needs.
//! - [`respond`](mod@respond): one request in, one reply or drop verdict out.
#![forbid(unsafe_code)]

pub mod packet;
pub mod respond;
pub mod state;
pub mod time;

pub use packet::{Header, LeapIndicator, Mode, PacketError, RefId, HEADER_LEN};
pub use respond::{respond, stamp_transmit, DropReason, Kiss, Verdict};
pub use state::{Correction, ServerState};
pub use time::{NtpShort, NtpTimestamp, UnixTime};
