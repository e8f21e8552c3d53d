//! The junk flood against a local sink: datagrams as sent per class, with
//! and without GSO, equal shares, a late start's tail, pacing and replies.

use super::*;
use crate::clients::open_plain;
use crate::junk::JunkClass;
use std::net::UdpSocket;

/// Reads everything `sink` receives within `for_` (it stops early once
/// `want` datagrams came): datagram lengths in arrival order.
fn drain(sink: &UdpSocket, want: usize, for_: Duration) -> Vec<usize> {
    sink.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + for_;
    let mut lens = Vec::new();
    let mut buf = [0u8; 2048];
    while lens.len() < want && Instant::now() < deadline {
        if let Ok(n) = sink.recv(&mut buf) {
            lens.push(n);
        }
    }
    lens
}

/// Room in `sink`'s queue for everything a test sends, whatever else
/// the host is doing (forced when root, else up to `rmem_max`).
fn deepen(sink: &UdpSocket) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(sink);
    let set = |opt| fastntp::sys::socket::setsockopt_int(fd, libc::SOL_SOCKET, opt, 32 << 20);
    if set(libc::SO_RCVBUFFORCE).is_err() {
        let _ = set(libc::SO_RCVBUF);
    }
}

fn flood_to(sink: &UdpSocket, classes: Vec<JunkClass>, gso: bool) -> Flood {
    deepen(sink);
    let target = sink.local_addr().unwrap();
    let sockets = open_plain(target, 2, JUNK_RECV_BUFFER).unwrap();
    let cfg = FloodConfig {
        target,
        classes,
        gso,
        linger: Duration::from_millis(10),
    };
    Flood::new(&cfg, sockets).unwrap()
}

#[test]
fn a_call_sends_each_class_as_separate_datagrams_with_and_without_gso() {
    for gso in [true, false] {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let classes = vec![JunkClass::Oversize, JunkClass::Empty, JunkClass::Short];
        let mut f = flood_to(&sink, classes, gso);
        f.r.sent_by_class = vec![0; 3];
        for k in [100, 7, 30] {
            assert_eq!(f.send_class(k), k as u64, "gso {gso}");
        }
        let lens = drain(&sink, 137, Duration::from_secs(5));
        let mut want = vec![1400; 100];
        want.extend([0; 7]);
        want.extend([47; 30]);
        assert_eq!(lens, want, "gso {gso}");
        assert_eq!(f.r.sent, 137);
        // Messages: 100 oversize in 3 GSO messages (46 per 64,400 B)
        // plus 7 + 30; without GSO one per datagram.
        assert_eq!(f.r.messages, if gso { 3 + 7 + 1 } else { 137 });
        assert_eq!(f.r.sent_by_class, vec![100, 7, 30]);
        // GSO: 100 oversize datagrams in 3 messages (46 per 64,400 B).
        assert_eq!(f.classes[0].per_message, if gso { 46 } else { 1 });
        assert_eq!(f.classes[1].per_message, 1, "empty datagrams never GSO");
    }
}

#[test]
fn classes_keep_equal_shares_when_calls_are_uneven() {
    // A late thread catches up with full calls between small ones; a
    // call-by-call rotation would hand every full call to one class.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let classes = vec![JunkClass::Empty, JunkClass::Short, JunkClass::Mode(6)];
    let mut f = flood_to(&sink, classes, true);
    f.r.sent_by_class = vec![0; 3];
    let mut total = 0;
    for k in [CALL_MAX, 1, 1].repeat(10) {
        total += f.send_class(k) as usize;
        let s = &f.r.sent_by_class;
        let spread = s.iter().max().unwrap() - s.iter().min().unwrap();
        assert!(spread <= CALL_MAX as u64, "{s:?}");
    }
    let s = &f.r.sent_by_class;
    assert_eq!(s.iter().sum::<u64>() as usize, total);
    assert!(s.iter().all(|&n| n >= 2 * CALL_MAX as u64), "{s:?}");
    assert_eq!(drain(&sink, total, Duration::from_secs(5)).len(), total);
}

#[test]
fn a_flood_that_wakes_after_the_end_still_sends_its_tail() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut f = flood_to(&sink, vec![JunkClass::Empty], true);
    let cmd = FloodCmd {
        rate: 10_000.0,
        duration: Duration::from_millis(50),
        start: Instant::now() - Duration::from_millis(80),
    };
    let r = f.run_step(&cmd, &Interrupt::default());
    assert_eq!((r.sent, r.scheduled), (500, 500), "{r:?}");
    assert_eq!(drain(&sink, 500, Duration::from_secs(5)), vec![0; 500]);
}

#[test]
fn a_step_is_paced_and_counts_replies() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut f = flood_to(&sink, vec![JunkClass::Mode(6)], true);
    // The "server" answers one datagram per junk socket.
    let interrupt = Interrupt::default();
    let cmd = FloodCmd {
        rate: 20_000.0,
        duration: Duration::from_millis(300),
        start: Instant::now() + Duration::from_millis(5),
    };
    let answer = std::thread::spawn({
        let sink = sink.try_clone().unwrap();
        move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 64];
            sink.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut got = 0;
            while let Ok((_, from)) = sink.recv_from(&mut buf) {
                got += 1;
                if seen.insert(from) {
                    sink.send_to(b"reply", from).unwrap();
                }
            }
            got
        }
    });
    let r = f.run_step(&cmd, &interrupt);
    let got = answer.join().unwrap();
    assert_eq!(r.sent, 6_000, "{r:?}");
    assert_eq!(r.scheduled, 6_000);
    assert_eq!(got, 6_000);
    assert_eq!(r.replies, 2, "{r:?}");
    assert_eq!(r.reply_bytes, 10);
    assert!(r.calls >= 6_000 / CALL_MAX as u64, "{r:?}");
}

#[test]
fn the_segment_control_message_has_the_kernels_layout() {
    let mut c = SegmentControl::default();
    let len = write_segment_control(&mut c, 1400);
    // SAFETY: CMSG_SPACE / CMSG_LEN are pure arithmetic.
    let (space, cmsg_len) = unsafe { (libc::CMSG_SPACE(2) as usize, libc::CMSG_LEN(2) as usize) };
    assert_eq!(len, space);
    let base = c.0.as_ptr().cast::<libc::cmsghdr>();
    // SAFETY: the buffer is aligned for and holds a cmsghdr just written.
    let hdr = unsafe { std::ptr::read(base) };
    assert_eq!(hdr.cmsg_len as usize, cmsg_len);
    assert_eq!(
        (hdr.cmsg_level, hdr.cmsg_type),
        (libc::SOL_UDP, libc::UDP_SEGMENT)
    );
    // SAFETY: CMSG_DATA only offsets the header's address.
    let at = unsafe { libc::CMSG_DATA(base) } as usize - base as usize;
    assert_eq!(c.0[at..at + 2], 1400u16.to_ne_bytes());
}
