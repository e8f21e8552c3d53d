//! Steering every datagram of one client address to one socket of a
//! `SO_REUSEPORT` group, in the kernel: a classic-BPF program attached
//! with `SO_ATTACH_REUSEPORT_CBPF` ([`client_steering_program`],
//! [`attach_client_steering`]).
//!
//! Without it the kernel picks a group's socket by a hash of the 4-tuple,
//! so a client that randomises its source port (RFC 9109) lands on every
//! worker in turn, and a per-worker client table (rate limits) sees only a
//! share of its requests. The program hashes the client's source address
//! alone, masked to a prefix (IPv4 `/32` and IPv6 `/64` by default: one
//! host, one IPv6 subnet), and returns the hash modulo the group size.
//!
//! How the kernel runs it (`reuseport_select_sock`):
//! - The program sees the UDP payload at offset 0; the IP header is read
//!   with absolute loads at `SKF_NET_OFF` (−0x100000) + offset.
//! - The index it returns is the socket's *position in the group*: the
//!   order in which the sockets were bound (a closed socket's slot is
//!   taken by the last one). `fastntpd` binds one socket per worker in
//!   worker order, so index = worker number. The program must be attached
//!   again whenever the group changes; `fastntpd` never changes it while it
//!   runs: the groups are bound once in `Server::start`, and neither an
//!   io_uring ring restart (`io::uring::serve` builds a new ring over the
//!   same borrowed sockets) nor the fallback to the mmsg backend creates,
//!   closes or re-binds a socket.
//! - Attaching on any one socket of a group sets the program for the whole
//!   group (including sockets that join later).
//! - An index ≥ the group size makes the kernel fall back to its own
//!   4-tuple hash. The program returns one ([`NOT_IP`]) for a datagram
//!   that is neither IPv4 nor IPv6, which a UDP socket of this process
//!   never receives: spread by the kernel rather than piled on worker 0.
//!
//! What it means for operators:
//! - One huge client behind a single address (a carrier-grade NAT, a big
//!   office) is pinned to one worker: it can use at most one core's worth
//!   of serving. A prefix shorter than the default pins a whole network.
//!   Prefix 0 sends every client to one worker.
//! - A load generator that sends from one address reaches one worker;
//!   many source addresses (`ntp-loadgen --source-range`) reach them all.
//!   Likewise a flood from one address loads one worker (the others keep
//!   serving everyone else), and that worker's receive queue takes all of
//!   it.
//! - With one worker there is nothing to steer and nothing is attached.
//!
//! The hash: each source address word, masked to the prefix (words wholly
//! outside it are skipped), is mixed in with `h = (h ^ word) · M` (M odd),
//! then MurmurHash3's `fmix32` finaliser (xor-shifts and multiplies)
//! folds the high bits, which depend on every input bit, into the low
//! ones the modulo keeps (without it, a prefix such as /16 would leave the
//! low bits constant). About 30 instructions run per datagram, in the
//! kernel's receive path. The hash is not keyed: anyone can work out which
//! worker an address lands on, which gains nothing a spoofer with many
//! addresses does not already have.

use std::io;
use std::os::fd::AsRawFd;

/// What the program returns for a datagram that is neither IPv4 nor
/// IPv6: ≥ any group size, so the kernel picks the socket by its own hash.
pub const NOT_IP: u32 = u32::MAX;

/// Multiplier mixing each address word in: odd (a permutation of 32-bit
/// words), 2³² divided by the golden ratio.
const MIX: u32 = 0x9e37_79b1;
/// The final fold, MurmurHash3's `fmix32` (every output bit depends on
/// every input bit): `h ^= h >> s` then `h *= m` for each `(s, m)`, then
/// `h ^= h >> FOLD_LAST`.
const FOLD: [(u32, u32); 2] = [(16, 0x85eb_ca6b), (13, 0xc2b2_ae35)];
/// The last shift of the fold.
const FOLD_LAST: u32 = 16;

/// Where the IP header starts for absolute loads (`SKF_NET_OFF`), as the
/// 32-bit `k` of an instruction.
const NET: u32 = libc::SKF_NET_OFF as u32;
/// Offset of the IPv4 source address in its header.
const IPV4_SOURCE: u32 = 12;
/// Offset of the IPv6 source address in its header.
const IPV6_SOURCE: u32 = 8;

const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LD_IMM: u16 = (libc::BPF_LD | libc::BPF_IMM) as u16;
const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const MUL_K: u16 = (libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K) as u16;
const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
const XOR_X: u16 = (libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The classic-BPF program that sends every datagram from one client
/// address to socket `hash(source address masked to its prefix) mod
/// workers` of a reuseport group of `workers` sockets (see the module
/// documentation). `ipv4_prefix` is capped at 32, `ipv6_prefix` at 128,
/// `workers` is taken as at least 1.
pub fn client_steering_program(
    workers: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
) -> Vec<libc::sock_filter> {
    let workers = workers.max(1);
    let v4 = index_of_source(IPV4_SOURCE, ipv4_prefix.min(32), workers);
    let v6 = index_of_source(IPV6_SOURCE, ipv6_prefix.min(128), workers);
    // v4 is at most 18 instructions: the jump offsets fit a u8.
    let skip_v4 = u8::try_from(v4.len()).unwrap_or(u8::MAX);
    let mut program = vec![
        // A = IP version (high nibble of the first header byte).
        stmt(LD_B_ABS, NET),
        stmt(RSH_K, 4),
        // 4: the IPv4 block (after the next two); else on.
        jump(JEQ_K, 4, 2, 0),
        // 6: the IPv6 block (after the next one and the IPv4 block).
        jump(JEQ_K, 6, 1 + skip_v4, 0),
        stmt(RET_K, NOT_IP),
    ];
    program.extend(v4);
    program.extend(v6);
    program
}

/// Instructions that return the worker of the address at `source` (bytes
/// into the IP header), masked to `prefix` bits.
fn index_of_source(source: u32, prefix: u8, workers: u32) -> Vec<libc::sock_filter> {
    let mut out = Vec::new();
    let prefix = u32::from(prefix);
    let words = prefix.div_ceil(32);
    for i in 0..words {
        let bits = (prefix - 32 * i).min(32);
        out.push(stmt(LD_W_ABS, NET + source + 4 * i));
        if bits < 32 {
            out.push(stmt(AND_K, u32::MAX << (32 - bits)));
        }
        if i > 0 {
            // h ^ word (X holds h).
            out.push(stmt(XOR_X, 0));
        }
        out.push(stmt(MUL_K, MIX));
        out.push(stmt(TAX, 0));
    }
    if words == 0 {
        // Nothing of the address counts: every client hashes alike.
        out.push(stmt(LD_IMM, 0));
        out.push(stmt(TAX, 0));
    }
    // X = A = h here.
    for (shift, multiplier) in FOLD {
        out.extend([
            stmt(RSH_K, shift),
            stmt(XOR_X, 0),
            stmt(MUL_K, multiplier),
            stmt(TAX, 0),
        ]);
    }
    out.extend([
        stmt(RSH_K, FOLD_LAST),
        stmt(XOR_X, 0),
        stmt(MOD_K, workers),
        stmt(RET_A, 0),
    ]);
    out
}

/// Attaches [`client_steering_program`]`(workers, ipv4_prefix,
/// ipv6_prefix)` to the reuseport group `socket` is bound in (one socket
/// sets it for the whole group). `workers` must be the group's size, with
/// socket `i` of the group being worker `i`'s. An error that
/// [`steering_unsupported`] accepts means this kernel cannot do it.
pub fn attach_client_steering(
    socket: &impl AsRawFd,
    workers: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
) -> io::Result<()> {
    let program = client_steering_program(workers, ipv4_prefix, ipv6_prefix);
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, `len` instructions long, both
    // alive for the whole call; the kernel only reads (copies) the program
    // and the length passed is the size of `fprog`. The kernel validates
    // the descriptor, the option and the program itself.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an [`attach_client_steering`] error means the kernel cannot
/// steer at all (no `SO_ATTACH_REUSEPORT_CBPF` before Linux 4.5:
/// `ENOPROTOOPT`; an instruction it does not know: `EINVAL`), rather than
/// a failure on this socket.
pub fn steering_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOPROTOOPT) | Some(libc::EINVAL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    /// Runs `program` as the kernel would on a datagram whose IP header is
    /// `header` (payload empty): only the instructions the builder emits.
    fn run(program: &[libc::sock_filter], header: &[u8]) -> u32 {
        assert!(program.len() <= libc::BPF_MAXINSNS as usize);
        let load = |k: u32, size: usize| -> Option<u32> {
            let off = (k as i32).checked_sub(libc::SKF_NET_OFF)?;
            let off = usize::try_from(off).ok()?;
            let bytes = header.get(off..off + size)?;
            Some(bytes.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)))
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let insn = program[pc];
            pc += 1;
            match insn.code {
                // A failed load ends the program with 0, as in the kernel.
                LD_B_ABS => match load(insn.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_W_ABS => match load(insn.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_IMM => a = insn.k,
                RSH_K => a >>= insn.k,
                AND_K => a &= insn.k,
                MUL_K => a = a.wrapping_mul(insn.k),
                MOD_K => {
                    assert_ne!(insn.k, 0, "the kernel refuses mod 0");
                    a %= insn.k
                }
                XOR_X => a ^= x,
                TAX => x = a,
                JEQ_K => pc += usize::from(if a == insn.k { insn.jt } else { insn.jf }),
                RET_K => return insn.k,
                RET_A => return a,
                other => panic!("opcode {other:#x} not emitted by the builder"),
            }
            assert!(pc < program.len(), "fell off the end of the program");
        }
    }

    /// A 20-byte IPv4 header from `source`.
    fn v4_header(source: Ipv4Addr) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[9] = 17;
        h[12..16].copy_from_slice(&source.octets());
        h[16..20].copy_from_slice(&[127, 0, 0, 1]);
        h
    }

    /// A 40-byte IPv6 header from `source`.
    fn v6_header(source: Ipv6Addr) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[6] = 17;
        h[8..24].copy_from_slice(&source.octets());
        h[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        h
    }

    fn header(source: IpAddr) -> Vec<u8> {
        match source {
            IpAddr::V4(a) => v4_header(a),
            IpAddr::V6(a) => v6_header(a),
        }
    }

    /// Deterministic pseudo-random numbers (SplitMix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn v4(&mut self) -> Ipv4Addr {
            Ipv4Addr::from(self.next() as u32)
        }
        fn v6(&mut self) -> Ipv6Addr {
            Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next()))
        }
    }

    /// `addr` with random changes in the bits after its first `prefix`.
    fn vary_host_bits(rng: &mut Rng, addr: IpAddr, prefix: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                Ipv4Addr::from(u32::from(a) ^ (rng.next() as u32 & host)).into()
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
                Ipv6Addr::from(u128::from(a) ^ (r & host)).into()
            }
        }
    }

    /// How many of `clients` each of `workers` workers gets.
    fn spread(workers: u32, prefixes: (u8, u8), clients: &[IpAddr]) -> Vec<usize> {
        let program = client_steering_program(workers, prefixes.0, prefixes.1);
        let mut counts = vec![0usize; workers as usize];
        for &c in clients {
            let i = run(&program, &header(c));
            assert!(i < workers, "index {i} for {workers} workers ({c})");
            counts[i as usize] += 1;
        }
        counts
    }

    /// Every worker gets at least 15 % of `clients` (an even share is
    /// 1/workers of them).
    fn assert_spread(workers: u32, prefixes: (u8, u8), clients: &[IpAddr], what: &str) {
        let counts = spread(workers, prefixes, clients);
        let min = clients.len() * 15 / 100;
        assert!(
            counts.iter().all(|&n| n >= min),
            "{what} over {workers} workers: {counts:?} (each needs ≥ {min})"
        );
    }

    #[test]
    fn one_address_maps_to_one_worker_whatever_its_bits_outside_the_prefix() {
        let mut rng = Rng(1);
        for workers in [2, 3, 4, 7] {
            for (v4p, v6p) in [(32, 64), (24, 48), (17, 100), (8, 128), (0, 0), (31, 1)] {
                let program = client_steering_program(workers, v4p, v6p);
                for _ in 0..200 {
                    for (addr, prefix) in [(rng.v4().into(), v4p), (rng.v6().into(), v6p)] {
                        let index = run(&program, &header(addr));
                        assert!(index < workers);
                        for _ in 0..8 {
                            let other = vary_host_bits(&mut rng, addr, prefix);
                            assert_eq!(
                                run(&program, &header(other)),
                                index,
                                "{addr} and {other} with prefixes /{v4p} /{v6p}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn clients_spread_over_every_worker() {
        let mut rng = Rng(2);
        let v4: Vec<IpAddr> = (0..1000).map(|_| rng.v4().into()).collect();
        let v6: Vec<IpAddr> = (0..1000).map(|_| rng.v6().into()).collect();
        // Neighbours: the hosts of one /24, the /64 subnets of one /48.
        let v4_neighbours: Vec<IpAddr> = (1..=254u8)
            .map(|h| Ipv4Addr::new(192, 0, 2, h).into())
            .collect();
        let v6_subnets: Vec<IpAddr> = (0..1000u128)
            .map(|s| Ipv6Addr::from(0x2001_0db8_0001_u128 << 80 | s << 64 | 1).into())
            .collect();
        // Short prefixes: 256 /8 networks, 1000 /16 networks.
        let v4_eights: Vec<IpAddr> = (0..=255u8)
            .map(|n| Ipv4Addr::new(n, 1, 2, 3).into())
            .collect();
        let v4_sixteens: Vec<IpAddr> = (0..1000u32)
            .map(|n| Ipv4Addr::from(n << 16 | 0x0102).into())
            .collect();
        for workers in [2, 3, 4] {
            assert_spread(workers, (32, 64), &v4, "random IPv4 /32");
            assert_spread(workers, (32, 64), &v6, "random IPv6 /64");
            assert_spread(workers, (32, 64), &v4_neighbours, "192.0.2.0/24 hosts");
            assert_spread(workers, (32, 64), &v6_subnets, "/64s of 2001:db8:1::/48");
            assert_spread(workers, (8, 64), &v4_eights, "IPv4 /8s");
            assert_spread(workers, (16, 64), &v4_sixteens, "IPv4 /16s");
            assert_spread(workers, (32, 48), &v6, "random IPv6 /48");
        }
    }

    #[test]
    fn a_v4_prefix_of_24_keeps_a_subnet_together() {
        let program = client_steering_program(4, 24, 64);
        let at = |a: [u8; 4]| run(&program, &v4_header(a.into()));
        assert_eq!(at([192, 0, 2, 1]), at([192, 0, 2, 200]));
        assert_eq!(at([192, 0, 2, 0]), at([192, 0, 2, 255]));
        // Not every neighbouring /24 with it.
        let first = at([192, 0, 2, 1]);
        assert!((0..=255u8).any(|n| at([192, 0, n, 1]) != first));
    }

    #[test]
    fn a_v6_prefix_of_64_ignores_the_interface_identifier() {
        let program = client_steering_program(3, 32, 64);
        let at = |a: &str| run(&program, &v6_header(a.parse().unwrap()));
        let index = at("2001:db8:1:2::1");
        for other in [
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:a00:27ff:fe4e:66a1",
            "2001:db8:1:2:1234::",
        ] {
            assert_eq!(at(other), index, "{other}");
        }
        // The subnet part does count.
        assert!((0..64u16).any(|s| at(&format!("2001:db8:1:{s:x}::1")) != index));
    }

    #[test]
    fn prefix_zero_sends_every_client_to_one_worker() {
        let mut rng = Rng(3);
        for workers in [2, 3, 4] {
            let program = client_steering_program(workers, 0, 0);
            let first = run(&program, &v4_header(rng.v4()));
            for _ in 0..500 {
                assert_eq!(run(&program, &v4_header(rng.v4())), first);
                assert_eq!(run(&program, &v6_header(rng.v6())), first);
            }
        }
    }

    #[test]
    fn one_worker_is_always_worker_zero() {
        let mut rng = Rng(4);
        let program = client_steering_program(1, 32, 64);
        for _ in 0..200 {
            assert_eq!(run(&program, &v4_header(rng.v4())), 0);
            assert_eq!(run(&program, &v6_header(rng.v6())), 0);
        }
        // And 0 workers is taken as 1, not a division by zero.
        assert_eq!(
            run(&client_steering_program(0, 32, 64), &v4_header(rng.v4())),
            0
        );
    }

    #[test]
    fn neither_v4_nor_v6_is_left_to_the_kernel_hash() {
        let program = client_steering_program(4, 32, 64);
        for version in [0u8, 5, 7, 15] {
            let mut h = v4_header(Ipv4Addr::LOCALHOST);
            h[0] = version << 4 | 5;
            assert_eq!(run(&program, &h), NOT_IP);
        }
    }

    #[test]
    fn prefixes_past_the_address_length_are_capped() {
        let mut rng = Rng(5);
        let (wide, exact) = (
            client_steering_program(3, 200, 255),
            client_steering_program(3, 32, 128),
        );
        for _ in 0..200 {
            let (a, b) = (v4_header(rng.v4()), v6_header(rng.v6()));
            assert_eq!(run(&wide, &a), run(&exact, &a));
            assert_eq!(run(&wide, &b), run(&exact, &b));
        }
    }

    /// A reuseport group of `n` sockets on `ip`, port chosen by the kernel.
    fn group(ip: IpAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
        use socket2::{Domain, Socket, Type};
        let mut at = SocketAddr::new(ip, 0);
        let mut out = Vec::new();
        for _ in 0..n {
            let s = Socket::new(Domain::for_address(at), Type::DGRAM, None)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&at.into())?;
            let s: UdpSocket = s.into();
            at = s.local_addr()?;
            out.push(s);
        }
        Ok(out)
    }

    /// Sends one datagram from each of `ports` new sockets on each of
    /// `sources` to a steered group of three, and checks every one arrives
    /// on the socket the interpreter predicts for its source: the kernel
    /// runs the program as the interpreter does (byte order, SKF_NET_OFF,
    /// index = bind order). Returns the datagrams per socket.
    fn kernel_steers_as_predicted(listen: IpAddr, sources: &[IpAddr], ports: usize) -> Vec<usize> {
        const WORKERS: usize = 3;
        let Some(group) = testkit::require(
            group(listen, WORKERS).map_err(|e| format!("no reuseport group on {listen}: {e}")),
        ) else {
            return Vec::new();
        };
        attach_client_steering(&group[0], WORKERS as u32, 32, 64).expect("attach");
        let program = client_steering_program(WORKERS as u32, 32, 64);
        let target = group[0].local_addr().unwrap();
        let mut expected = [0usize; WORKERS];
        for &source in sources {
            let want = run(&program, &header(source)) as usize;
            for _ in 0..ports {
                let client = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
                client.send_to(&[0u8; 48], target).unwrap();
                expected[want] += 1;
            }
        }
        let total: usize = expected.iter().sum();
        let mut got = [0usize; WORKERS];
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.iter().sum::<usize>() < total && Instant::now() < deadline {
            for (i, s) in group.iter().enumerate() {
                while s.recv_from(&mut buf).is_ok() {
                    got[i] += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, expected, "datagrams per socket from {sources:?}");
        got.to_vec()
    }

    #[test]
    fn the_kernel_steers_each_v4_source_to_the_predicted_socket() {
        let sources: Vec<IpAddr> = (1..=12u8)
            .map(|h| Ipv4Addr::new(127, 0, 0, h).into())
            .collect();
        let got = kernel_steers_as_predicted(Ipv4Addr::LOCALHOST.into(), &sources, 8);
        // The sources were picked to reach every socket of the group.
        assert!(got.iter().all(|&n| n > 0), "{got:?}");
    }

    #[test]
    fn the_kernel_steers_v6_sources_to_the_predicted_socket() {
        kernel_steers_as_predicted(
            Ipv6Addr::LOCALHOST.into(),
            &[Ipv6Addr::LOCALHOST.into()],
            40,
        );
    }
}
