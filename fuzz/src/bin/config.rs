//! Fuzz target `config`: arbitrary bytes into the configuration parser
//! (see `fastntp_fuzz::config`).

fn main() {
    afl::fuzz!(|data: &[u8]| fastntp_fuzz::config::check(data));
}
