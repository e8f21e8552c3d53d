//! Sending one batch of requests on a load thread's next socket: a fresh
//! random transmit timestamp per request, recorded in its slot (and its
//! `OPT_ID` key in the TX-stamp ring, with `--precise-tx`), T1 read just
//! before the call, then one UDP GSO send or one `sendmmsg`; what the
//! kernel refused is released for the next try or counted as failed.

use fastntp::clock;

use super::{unix_ns, Engine, TX_RING};

impl Engine {
    /// Sends `k` requests as one batch on the next socket; returns how many
    /// requests of the schedule are dealt with (0: retry later).
    pub(super) fn send_batch(&mut self, k: usize) -> u64 {
        let s = self.next_socket;
        self.next_socket = if s + 1 == self.clients.len() {
            0
        } else {
            s + 1
        };
        let key0 = self.clients[s].next_tskey;
        let book = &mut self.book;
        for i in 0..k {
            let idx = book.table.index_of_seq(self.seq + i as u64);
            let tx = book.table.encode(idx, self.rng.next_u64());
            let key = key0.wrapping_add(i as u32);
            if book.table.claim(idx, tx, s as u16, key) {
                book.c.lost += 1;
            }
            self.out.set_transmit(i, tx);
            if book.precise {
                self.tx_ring[s * TX_RING + (key as usize & (TX_RING - 1))] = idx as u32;
            }
        }
        // T1: read as close to the send call as we can without kernel help.
        let t1 = unix_ns(clock::now());
        for i in 0..k {
            let idx = book.table.index_of_seq(self.seq + i as u64);
            book.table.set_t1(idx, t1);
        }
        let fd = self.clients[s].fd;
        let result = if self.gso {
            self.out.send_gso(fd, k)
        } else {
            self.out.send(fd, k)
        };
        let sent = *result.as_ref().unwrap_or(&0);
        for i in sent..k {
            let idx = book.table.index_of_seq(self.seq + i as u64);
            book.table.release_unsent(idx);
        }
        self.seq += sent as u64;
        self.clients[s].next_tskey = key0.wrapping_add(sent as u32);
        book.c.sent += sent as u64;
        if let Some(t) = &mut book.timeline {
            t.sent_at(t1, sent as u64);
        }
        match result {
            Ok(0) => {
                book.c.send_would_block += 1;
                0
            }
            Ok(n) => {
                book.c.send_calls += 1;
                n as u64
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM) => {
                    book.c.send_would_block += 1;
                    0
                }
                Some(libc::ECONNREFUSED) => {
                    // An ICMP error from an earlier datagram; it is cleared
                    // now, so the batch goes out on the next try.
                    book.c.refused += 1;
                    0
                }
                _ => {
                    // Anything else (e.g. a firewall's EPERM) fails this
                    // request for good.
                    book.c.send_errors += 1;
                    1
                }
            },
        }
    }
}
