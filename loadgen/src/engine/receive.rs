//! Reading what came back on a load thread's ready sockets: replies (up to
//! [`RECV_ROUNDS`] `recvmmsg` batches per socket, each datagram handed to
//! the [book](super::book)) and, with `--precise-tx`, the kernel's TX
//! stamps from the error queue, which give the matching requests their
//! precise T1.

use fastntp::sys::cmsg;

use super::{unix_ns, Engine, TX_RING};

/// Batches read from one ready socket before looking at the others.
const RECV_ROUNDS: usize = 8;
/// `SCM_TSTAMP_SND`: stamped when the datagram left for the device.
const TSTAMP_SND: u32 = 0;

impl Engine {
    /// Waits up to `timeout_ns` for ready sockets and reads them; returns
    /// the datagrams read.
    pub(super) fn poll(&mut self, timeout_ns: u64) -> usize {
        let n = match self.poller.wait(timeout_ns) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let mut total = 0;
        for i in 0..n {
            let r = self.poller.ready(i);
            let s = r.token as usize;
            if r.error && self.errq.is_some() {
                self.read_tx_stamps(s);
            }
            if r.readable || r.error {
                total += self.read_replies(s);
            }
        }
        total
    }

    /// Reads the TX stamps queued on socket `s`.
    fn read_tx_stamps(&mut self, s: usize) {
        let Some(errq) = self.errq.as_mut() else {
            return;
        };
        let fd = self.clients[s].fd;
        for _ in 0..RECV_ROUNDS {
            // An error here (none is expected) just ends this read.
            let n: usize = errq.recv(fd, libc::MSG_ERRQUEUE).unwrap_or_default();
            for i in 0..n {
                let Some(tx) = cmsg::parse_tx_timestamp(errq.control(i)) else {
                    continue;
                };
                if tx.kind != TSTAMP_SND {
                    continue;
                }
                let idx = self.tx_ring[s * TX_RING + (tx.id as usize & (TX_RING - 1))] as usize;
                if !self
                    .book
                    .table
                    .set_precise_t1(idx, s as u16, tx.id, unix_ns(tx.stamp))
                {
                    self.book.c.tx_stamps_unmatched += 1;
                }
            }
            if n < errq.capacity() {
                break;
            }
        }
    }

    /// Reads the replies queued on socket `s`.
    fn read_replies(&mut self, s: usize) -> usize {
        let fd = self.clients[s].fd;
        let mut total = 0;
        for _ in 0..RECV_ROUNDS {
            let n = match self.inb.recv(fd, 0) {
                Ok(n) => n,
                Err(e) => {
                    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                        self.book.c.refused += 1;
                        continue;
                    }
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.book.c.recv_calls += 1;
            for i in 0..n {
                let drops = self.book.on_datagram(s, &self.inb, i);
                if drops.is_some() {
                    self.clients[s].drops_seen = drops;
                }
            }
            total += n;
            if n < self.inb.capacity() {
                break;
            }
        }
        total
    }
}
