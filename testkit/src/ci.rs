//! The one rule for tests that need something this host may lack (an
//! external tool, io_uring, a second core, IPv6 loopback, a built binary, a
//! recent kernel): outside CI they print `SKIPPED: why` and pass; under
//! `.ci/run` (`FASTNTP_CI` set), where everything must be there, they fail.

use std::fmt::Display;
use std::path::PathBuf;

/// Whether we run under `.ci/run` (everything a test needs must be there).
pub fn in_ci() -> bool {
    std::env::var_os("FASTNTP_CI").is_some()
}

/// The test cannot run here because of `why`: prints `SKIPPED: why` (the
/// caller then returns), or fails the test in CI.
pub fn skip(why: impl Display) {
    assert!(
        !in_ci(),
        "FASTNTP_CI is set, so this test must run here, but {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// `Some(value)`, or `None` after [`skip`] with the error: for
/// `let Some(x) = require(...) else { return };`.
pub fn require<T, E: Display>(found: Result<T, E>) -> Option<T> {
    found.map_err(skip).ok()
}

/// Path of an external tool on `PATH` or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Path of an external tool, or `None` after [`skip`] (`bash .ci/run`
/// installs every tool the tests use).
pub fn require_tool(name: &str) -> Option<String> {
    let found = find_tool(name).ok_or_else(|| {
        format!("{name} is not installed (`bash .ci/run` installs what the tests need)")
    });
    require(found).map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_found_and_a_made_up_tool_is_not() {
        assert!(find_tool("sh").is_some());
        assert_eq!(find_tool("no-such-tool-fastntp-testkit"), None);
    }
}
