//! The memory a ring shares with the kernel: the provided-buffer ring that
//! multishot receives fill, the send slots (header, reply, peer address,
//! packet info) of replies in flight, and the receive template that lays
//! out each buffer.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::{BUFFER_GROUP, NAME_LEN, RECV_BUF_LEN};
use crate::proto::HEADER_LEN;
use crate::sys::buffers::zeroed_slice;
use crate::sys::cmsg::{ControlBuf, RECV_CONTROL_LEN, SEND_CONTROL_LEN};

/// The page-aligned ring of provided-buffer descriptors plus the buffers it
/// hands out. Owned by one worker thread.
pub(super) struct BufRing {
    entries: *mut BufRingEntry,
    layout: Layout,
    slab: Box<[u8]>,
    count: u16,
    /// Local producer position, published to the kernel by [`Self::publish`].
    tail: u16,
}

impl BufRing {
    pub(super) fn new(count: u16) -> io::Result<Self> {
        let layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size (count > 0).
        let entries = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = BufRing {
            entries,
            layout,
            slab: vec![0u8; count as usize * RECV_BUF_LEN].into_boxed_slice(),
            count,
            tail: 0,
        };
        for bid in 0..count {
            ring.give(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with `uring` as [`BUFFER_GROUP`].
    pub(super) fn register(&self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: the descriptor array and the slab live as long as `self`,
        // and `self` is dropped only after the ring (see `UringWorker`).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.entries as u64,
                self.count,
                BUFFER_GROUP,
                0,
            )
        }
    }

    /// Hands buffer `bid` (back) to the kernel; visible after `publish`.
    pub(super) fn give(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        let addr = self.slab[bid as usize * RECV_BUF_LEN..].as_ptr() as u64;
        // SAFETY: slot < count, inside the allocation; only this thread
        // writes entries, and the kernel reads an entry only once the tail
        // published by `publish` covers it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(RECV_BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer given so far visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: `entries` points at the initialised first entry of the
        // ring; the tail field overlays its reserved word and is shared with
        // the kernel, so it is accessed atomically with release ordering
        // (entries written before, tail after).
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    pub(super) fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = (bid as usize % self.count as usize) * RECV_BUF_LEN;
        &self.slab[start..start + len.min(RECV_BUF_LEN)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the kernel no longer
        // uses it because the ring was dropped first.
        unsafe { dealloc(self.entries.cast(), self.layout) }
    }
}

/// Reply slots: header, payload, destination and packet info of each reply
/// in flight. Headers point into the boxed arrays, which never move.
pub(super) struct SendSlots {
    pub(super) hdr: Box<[libc::msghdr]>,
    pub(super) iov: Box<[libc::iovec]>,
    pub(super) reply: Box<[[u8; HEADER_LEN]]>,
    pub(super) name: Box<[[u8; NAME_LEN]]>,
    pub(super) control: Box<[ControlBuf<SEND_CONTROL_LEN>]>,
    pub(super) free: Vec<u32>,
}

impl SendSlots {
    pub(super) fn new(n: usize) -> Self {
        let mut s = SendSlots {
            // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
            hdr: unsafe { zeroed_slice(n) },
            // SAFETY: all-zero is a valid iovec.
            iov: unsafe { zeroed_slice(n) },
            reply: vec![[0u8; HEADER_LEN]; n].into_boxed_slice(),
            name: vec![[0u8; NAME_LEN]; n].into_boxed_slice(),
            control: vec![ControlBuf::default(); n].into_boxed_slice(),
            free: (0..n as u32).rev().collect(),
        };
        for i in 0..n {
            s.iov[i] = libc::iovec {
                iov_base: s.reply[i].as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            };
            s.hdr[i].msg_iov = &mut s.iov[i];
            s.hdr[i].msg_iovlen = 1;
            s.hdr[i].msg_name = s.name[i].as_mut_ptr().cast();
        }
        s
    }
}

/// A receive template per socket: only its name and control lengths matter
/// to the kernel (they lay out each buffer).
pub(super) fn recv_template() -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_namelen = NAME_LEN as u32;
    m.msg_controllen = RECV_CONTROL_LEN as _;
    m
}
