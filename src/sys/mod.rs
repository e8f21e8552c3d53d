//! The thin layer over Linux that the serving backends ([`crate::io`]) and
//! the upstream client ([`crate::discipline`]) share, and nothing else:
//! control messages ([`cmsg`]), socket options, drop counts and one
//! `recvmsg` with its control data ([`socket`]), the sender of a datagram
//! ([`sockaddr`]), kernel transmit timestamps
//! read from the error queue ([`txstamp`]), zeroed C-struct arrays for
//! batched system calls ([`buffers`]), thread pinning ([`cpu`]) and the
//! kernel program that steers each client address to one socket of a
//! reuseport group ([`reuseport`]). It knows sockets and timestamps, not
//! NTP.

pub mod buffers;
pub mod cmsg;
pub mod cpu;
pub mod reuseport;
pub mod sockaddr;
pub mod socket;
pub mod txstamp;
