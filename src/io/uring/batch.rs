//! How an io_uring batch looks to the worker ([`Batch`]): request `i` is
//! the `i`-th receive completion of the wait, read in place in its provided
//! buffer; its reply goes into a send slot taken from the free list, kept
//! replies are queued as send entries chunk by chunk, and a probed chunk's
//! transmit stamps are read after the wait that sends it.

use std::ops::Range;

use io_uring::opcode;
use io_uring::types::{Fixed, RecvMsgOut};

use super::{push, submit, Failure, TxSample, UringWorker, NAME_LEN, PAYLOAD_AT, TAG_SEND};
use crate::io::socket::ListenSocket;
use crate::io::txtime::{Departures, SEND_CHUNK};
use crate::io::worker::{Batch, Datagram, Sent, UNKNOWN_SOURCE};
use crate::proto::{UnixTime, HEADER_LEN};
use crate::sys::sockaddr;
use crate::sys::{cmsg, txstamp};

impl UringWorker<'_> {
    /// The receive buffer of datagram `i` of the batch, parsed.
    fn message(&self, i: usize) -> Option<RecvMsgOut<'_>> {
        let (sock, bid, len) = self.received[i];
        let buffer = self.buffers.buffer(bid, len as usize);
        RecvMsgOut::parse(buffer, &self.templates[sock as usize]).ok()
    }

    /// Takes a send slot for the next reply, unless one is already taken.
    fn take_slot(&mut self) -> Option<u32> {
        if self.current.is_none() {
            self.current = self.slots.free.pop();
        }
        self.current
    }

    /// Queues the send of the reply in `slot` through socket `sock`.
    fn push_send(&mut self, slot: u32, sock: u32) -> Result<(), Failure> {
        let s = slot as usize;
        let hdr = &self.slots.hdr[s];
        // Packet info needs a message header; otherwise a plain send with a
        // destination spares the kernel copying one in.
        let entry = if hdr.msg_controllen == 0 {
            opcode::Send::new(Fixed(sock), self.slots.reply[s].as_ptr(), HEADER_LEN as u32)
                .dest_addr(self.slots.name[s].as_ptr().cast())
                .dest_addr_len(hdr.msg_namelen)
                .flags(libc::MSG_DONTWAIT)
                .build()
        } else {
            opcode::SendMsg::new(Fixed(sock), hdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
        };
        push(&mut self.ring, &entry.user_data(TAG_SEND | slot as u64))
    }
}

impl Batch for UringWorker<'_> {
    fn received(&self) -> usize {
        self.received.len()
    }

    fn request(&mut self, i: usize) -> (Datagram<'_>, &mut [u8; HEADER_LEN]) {
        let slot = self.take_slot();
        let (sock, bid, len) = self.received[i];
        let buffer = self.buffers.buffer(bid, len as usize);
        let reply = match slot {
            Some(s) => &mut self.slots.reply[s as usize],
            None => &mut self.scratch,
        };
        let Ok(msg) = RecvMsgOut::parse(buffer, &self.templates[sock as usize]) else {
            // Shorter than the header the kernel writes: never seen, but
            // counted (as oversize) rather than trusted.
            let dgram = Datagram {
                payload: &[],
                truncated: true,
                rx_stamp: None,
                source: UNKNOWN_SOURCE,
            };
            return (dgram, reply);
        };
        let info = cmsg::parse(msg.control_data());
        let (len, truncated) = (msg.payload_data().len(), msg.is_payload_truncated());
        // The payload follows the name and control fields the template
        // lays out (`parse` checked that it lies within the buffer).
        let payload = buffer.get(PAYLOAD_AT..PAYLOAD_AT + len).unwrap_or_default();
        self.current_local = if self.sockets[sock as usize].wildcard {
            info.local
        } else {
            None
        };
        let dgram = Datagram {
            payload,
            truncated,
            rx_stamp: info.rx_stamp,
            source: sockaddr::ip_of(msg.name_data()).unwrap_or(UNKNOWN_SOURCE),
        };
        (dgram, reply)
    }

    fn keep(&mut self, i: usize) -> Result<(), i32> {
        // Every slot in flight: the reply went to scratch.
        let slot = self.current.take().ok_or(libc::ENOBUFS)?;
        let s = slot as usize;
        let mut name = [0u8; NAME_LEN];
        let n = match self.message(i) {
            Some(msg) => {
                let from = msg.name_data();
                let n = from.len().min(NAME_LEN);
                name[..n].copy_from_slice(&from[..n]);
                n
            }
            None => 0,
        };
        self.slots.name[s] = name;
        let control = &mut self.slots.control[s].0;
        let (control_ptr, control_len) = match &self.current_local {
            Some(local) => (control.as_mut_ptr(), cmsg::write_source(control, local)),
            None => (std::ptr::null_mut(), 0),
        };
        let hdr = &mut self.slots.hdr[s];
        hdr.msg_namelen = n as u32;
        hdr.msg_control = control_ptr.cast();
        hdr.msg_controllen = control_len as _;
        self.pending.push((slot, self.received[i].0));
        Ok(())
    }

    fn answered(&mut self) {
        if let Some(slot) = self.current.take() {
            self.slots.free.push(slot);
        }
        if self.received.is_empty() {
            return;
        }
        for &(_, bid, _) in &self.received {
            self.buffers.give(bid);
        }
        self.received.clear();
        self.buffers.publish();
    }

    fn reply(&mut self, k: usize) -> &mut [u8; HEADER_LEN] {
        &mut self.slots.reply[self.pending[k].0 as usize]
    }

    /// One probed chunk at a time, all on one socket (transmit stamps are
    /// switched on per socket).
    fn probe(&mut self, chunk: Range<usize>) -> bool {
        let sock = self.pending[chunk.start].1 as usize;
        let ok = self.tx_sample.is_none()
            && self.pending[chunk].iter().all(|p| p.1 as usize == sock)
            && txstamp::set_tx_stamping(self.sockets[sock].fd(), true).is_ok();
        self.probing = ok.then_some(sock);
        ok
    }

    /// Queues the chunk's sends; all but the batch's last chunk are
    /// submitted at once, the last goes out with the next wait. A batch
    /// of one chunk costs no system call of its own.
    fn send(&mut self, chunk: Range<usize>, t0: UnixTime) -> Sent {
        if self.failure.is_some() {
            // The ring is being given up; its replies are lost with it.
            return Sent::default();
        }
        for i in chunk.clone() {
            let (slot, sock) = self.pending[i];
            if let Err(f) = self.push_send(slot, sock) {
                self.failure = Some(f);
                return Sent::default();
            }
        }
        if let Some(sock) = self.probing.take() {
            let keys = &mut self.state[sock].keys;
            let first = keys.next();
            let len = chunk.len().min(SEND_CHUNK);
            keys.sent(len);
            let mut slots = [None; SEND_CHUNK];
            for (k, p) in self.pending[chunk.start..chunk.start + len]
                .iter()
                .enumerate()
            {
                slots[k] = Some(p.0);
            }
            self.tx_sample = Some(TxSample {
                t0,
                sock,
                len,
                first,
                stamping: true,
                slots,
            });
        }
        if chunk.end < self.pending.len() {
            if let Err(f) = submit(&mut self.ring) {
                self.failure = Some(f);
            }
            self.stop_tx_stamping();
        }
        Sent::default()
    }

    fn departures(&mut self) -> Option<Departures> {
        self.departed.take()
    }

    fn sockets(&self) -> &[ListenSocket] {
        self.sockets
    }
}
