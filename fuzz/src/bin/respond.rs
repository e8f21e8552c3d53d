//! Fuzz target `respond`: arbitrary bytes into the reply pipeline (see
//! `fastntp_fuzz::respond`).

fn main() {
    afl::fuzz!(|data: &[u8]| fastntp_fuzz::respond::check(data));
}
