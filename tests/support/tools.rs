//! External tools the integration tests use (chronyd, capsh, …), shared by
//! the fastntp and ntp-loadgen test suites: found on `PATH` or in the sbin
//! directories; when missing, a test prints why it is skipped, except
//! under `.ci/run` (`FASTNTP_CI` set), where every tool must be there.

/// Whether we run under `.ci/run` (tools that tests need must be present).
pub fn in_ci() -> bool {
    std::env::var_os("FASTNTP_CI").is_some()
}

/// Path of an external tool, or `None` after printing why the test is
/// skipped. In CI a missing tool fails the test.
pub fn require_tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .chain(
                ["/usr/sbin", "/sbin"]
                    .iter()
                    .map(|d| std::path::Path::new(d).join(name)),
            )
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if in_ci() => panic!("{name} is required in CI (FASTNTP_CI is set) but not installed"),
        None => {
            eprintln!(
                "SKIPPED: {name} is not installed (`bash .ci/run` installs what the tests need)"
            );
            None
        }
    }
}
