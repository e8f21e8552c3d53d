//! `kernel` discipline against a fake kernel clock (issue 5, acceptance
//! 4): slew below the step threshold, step above it, refuse beyond the
//! panic threshold except for an `ntpd -g`-style first step, the drift file
//! round trip, a stale start frequency, no slew left behind at exit, kernel
//! leap flags before a leap and the leap itself; and the real adjtimex path
//! read-only (modes = 0). Nothing here touches this machine's clock.

mod sim;

use fastntp::config::{ClockConfig, DisciplineMode};
use fastntp::discipline::drift;
use fastntp::discipline::kernel_clock::{FakeOp, KernelClock, SystemClock};
use fastntp::discipline::status::SyncState;
use fastntp::proto::LeapIndicator;
use sim::{leap_table_inserting_at, Sim, VirtualUpstream, LEAP_MIDNIGHTS};

fn kernel_clock(first_step_unlimited: bool) -> ClockConfig {
    ClockConfig {
        discipline: DisciplineMode::Kernel,
        first_step_unlimited,
        ..ClockConfig::default()
    }
}

fn upstreams() -> Vec<VirtualUpstream> {
    (1..=3).map(VirtualUpstream::new).collect()
}

fn steps(sim: &Sim) -> Vec<f64> {
    sim.clock
        .operations()
        .into_iter()
        .filter_map(|o| match o {
            FakeOp::Step(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn below_the_step_threshold_the_kernel_clock_is_slewed() {
    let mut sim = Sim::new(
        kernel_clock(true),
        0.050,
        20e-6,
        0.0,
        upstreams(),
        (4, 6),
        1,
    );
    sim.run_until(600.0);
    assert_eq!(steps(&sim), Vec::<f64>::new());
    let freqs: Vec<f64> = sim
        .clock
        .operations()
        .into_iter()
        .filter_map(|o| match o {
            FakeOp::Frequency(f) => Some(f),
            _ => None,
        })
        .collect();
    // Slewing shows as frequency changes of up to 500 ppm.
    assert!(freqs.iter().any(|f| f.abs() > 400.0), "{freqs:?}");
    assert!(freqs.iter().all(|f| f.abs() <= 500.0 + 1e-9));
    assert!(sim.clock.error().abs() < 0.001, "{}", sim.clock.error());
    assert!(sim.clock.operations().contains(&FakeOp::Sync(true)));
}

#[test]
fn above_the_step_threshold_it_is_stepped_and_beyond_panic_refused() {
    let mut sim = Sim::new(kernel_clock(true), 0.5, 0.0, 0.0, upstreams(), (4, 6), 2);
    sim.run_until(300.0);
    let s = steps(&sim);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!((s[0] + 0.5).abs() < 0.002, "{s:?}");
    assert!(sim.clock.error().abs() < 0.001);

    // The upstreams jump 0.3 s: stepped after them.
    for i in 0..3 {
        sim.upstream(i).offset = 0.3;
    }
    sim.run_until(900.0);
    let s = steps(&sim);
    assert_eq!(s.len(), 2, "{s:?}");
    assert!((s[1] - 0.3).abs() < 0.002, "{s:?}");
    // Our own steps are never mistaken for someone else's.
    assert_eq!(sim.engine.foreign_steps(), 0);

    // Then 2000 s: beyond panic-threshold, refused; the server leaves
    // "synchronized" and never steps.
    for i in 0..3 {
        sim.upstream(i).offset = 2000.3;
    }
    sim.run_until(900.0 + 3.0 * 3600.0);
    assert_eq!(steps(&sim).len(), 2, "{:?}", steps(&sim));
    assert!((sim.clock.error() - 0.3).abs() < 0.01);
    assert_ne!(sim.engine.state(), SyncState::Synchronized);
}

#[test]
fn the_first_correction_may_exceed_panic_like_ntpd_g() {
    let mut sim = Sim::new(
        kernel_clock(true),
        -2000.0,
        0.0,
        0.0,
        upstreams(),
        (4, 6),
        3,
    );
    sim.run_until(120.0);
    let s = steps(&sim);
    assert_eq!(s.len(), 1);
    assert!((s[0] - 2000.0).abs() < 0.01, "{s:?}");
    assert_eq!(sim.engine.state(), SyncState::Synchronized);

    // Without -g behaviour it is refused, and the server stays
    // unsynchronized rather than serve a clock 2000 s off.
    let mut sim = Sim::new(
        kernel_clock(false),
        -2000.0,
        0.0,
        0.0,
        upstreams(),
        (4, 6),
        3,
    );
    sim.run_until(300.0);
    assert_eq!(steps(&sim), Vec::<f64>::new());
    assert_eq!(sim.engine.state(), SyncState::Unsynchronized);
    assert_eq!(sim.last().state.leap, LeapIndicator::Unsynchronized);
}

#[test]
fn drift_file_round_trip_starts_the_next_run_on_frequency() {
    let mut sim = Sim::new(kernel_clock(true), 0.01, 50e-6, 0.0, upstreams(), (4, 8), 4);
    sim.run_until(3600.0);
    let kernel = sim.kernel.as_ref().expect("kernel mode");
    let ppm = kernel.drift_ppm(sim.engine.trajectory().freq);
    assert!(
        (ppm + 50.0).abs() < 0.1,
        "learned {ppm} ppm for a 50 ppm fast clock"
    );

    let dir = std::env::temp_dir().join(format!("fastntp-kdrift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("drift");
    drift::write(&path, ppm).unwrap();
    let read = drift::read(&path).unwrap().unwrap();
    assert!((read - ppm).abs() < 1e-4);
    std::fs::remove_dir_all(&dir).unwrap();

    // Next start: the same oscillator, kernel set from the drift file. It
    // runs right from the start and needs no large frequency change.
    let mut sim = Sim::new(kernel_clock(true), 0.01, 50e-6, 0.0, upstreams(), (4, 8), 5);
    sim.set_kernel_base(read);
    assert!(sim.clock.rate_error().abs() < 0.1e-6);
    sim.run_until(1800.0);
    let ops = sim.clock.operations();
    let last_freq = ops
        .iter()
        .rev()
        .find_map(|o| match o {
            FakeOp::Frequency(f) => Some(*f),
            _ => None,
        })
        .unwrap();
    assert!((last_freq - read).abs() < 0.5, "{last_freq} vs {read}");
    assert!(sim.clock.error().abs() < 0.001);
    eprintln!("drift learned in 1 h: {ppm:+.4} ppm (true -50); restarted kernel frequency {last_freq:+.4} ppm");
}

#[test]
fn a_stale_start_frequency_still_leaves_room_to_steer() {
    // The kernel was left at +400 ppm; this oscillator needs -50 ppm, i.e.
    // -450 ppm from where the discipline starts.
    let mut sim = Sim::new(kernel_clock(true), 0.01, 50e-6, 0.0, upstreams(), (4, 8), 7);
    sim.set_kernel_base(400.0);
    sim.run_until(3600.0);
    assert!(sim.clock.error().abs() < 0.001, "{}", sim.clock.error());
    assert!(
        sim.clock.rate_error().abs() < 0.1e-6,
        "kernel clock still {} ppm off",
        sim.clock.rate_error() * 1e6
    );
    let ppm = sim
        .kernel
        .as_ref()
        .unwrap()
        .drift_ppm(sim.engine.trajectory().freq);
    assert!((ppm + 50.0).abs() < 0.1, "{ppm}");
    assert_eq!(sim.engine.state(), SyncState::Synchronized);
}

#[test]
fn at_exit_the_kernel_keeps_the_frequency_but_not_the_slew() {
    let mut sim = Sim::new(
        kernel_clock(true),
        0.100,
        50e-6,
        0.0,
        upstreams(),
        (4, 6),
        8,
    );
    // Half-way through slewing 100 ms away at up to 500 ppm.
    sim.run_until(120.0);
    let slewing = sim.clock.rate_error();
    assert!(slewing.abs() > 200e-6, "not slewing: {slewing:e}");
    sim.shutdown();
    // What is left is the frequency correction alone: the clock runs
    // true to within a few ppm, not hundreds.
    let left = sim.clock.rate_error();
    assert!(left.abs() < 5e-6, "left at {} ppm", left * 1e6);
    let last = sim.clock.operations().last().copied();
    let Some(FakeOp::Frequency(ppm)) = last else {
        panic!("{last:?}")
    };
    assert!((ppm + 50.0).abs() < 5.0, "{ppm}");
}

#[test]
fn kernel_leap_second_is_armed_applied_once_and_disarmed() {
    // Start at 22:00 UTC on the last day of a month whose midnight gets a
    // new TAI-UTC offset in the list, i.e. a second is inserted; the
    // upstreams repeat a second at midnight too. In 2016, after the 2036
    // NTP era change, and in 2100.
    for midnight_unix in LEAP_MIDNIGHTS {
        let midnight = 7200.0;
        let start = midnight_unix - 7200;
        let mut ups = upstreams();
        for u in &mut ups {
            u.leap_step = Some((midnight, -1.0));
        }
        let mut sim = Sim::new_at(start, kernel_clock(true), 0.0, 0.0, 0.0, ups, (4, 6), 6);
        sim.engine
            .set_leap_table(Some(leap_table_inserting_at(midnight_unix)));
        sim.run_until(3600.0);
        assert!(
            sim.clock
                .operations()
                .contains(&FakeOp::Leap(LeapIndicator::InsertSecond)),
            "{midnight_unix}: {:?}",
            sim.clock.operations()
        );
        assert_eq!(sim.last().state.leap, LeapIndicator::InsertSecond);
        // Kernel mode: the kernel inserts the second, not the workers.
        assert_eq!(sim.last().state.correction.leap_step, 0);

        // Through midnight and an hour on.
        sim.run_until(midnight + 3600.0);
        assert_eq!(sim.clock.leaps_applied(), 1, "{midnight_unix}");
        // Our own kernel's leap is not someone else's step, and nothing
        // was stepped back to "fix" it.
        assert_eq!(sim.engine.foreign_steps(), 0, "{midnight_unix}");
        assert_eq!(steps(&sim), Vec::<f64>::new());
        // Disarmed afterwards, and LI back to 0.
        assert_eq!(sim.clock.status().unwrap().leap, LeapIndicator::NoWarning);
        assert_eq!(sim.last().state.leap, LeapIndicator::NoWarning);
        assert!(sim
            .between(midnight, midnight + 3600.0)
            .all(|p| p.sync == SyncState::Synchronized));
        // The kernel clock is UTC: one second behind the continuous
        // timescale.
        assert!(
            (sim.clock.error() + 1.0).abs() < 0.001,
            "{midnight_unix}: {}",
            sim.clock.error()
        );
    }
}

#[test]
fn the_real_adjtimex_path_reads_without_changing_anything() {
    // modes = 0 only. (Another daemon may steer this clock meanwhile, so
    // two reads need not agree.)
    let status = SystemClock.status().expect("adjtimex (modes = 0)");
    eprintln!("kernel clock status: {status:?}");
    assert!(status.frequency_ppm.abs() <= 500.0);
    assert!(status.maxerror >= 0.0 && status.esterror >= 0.0);
}
