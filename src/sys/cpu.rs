//! Which cores this process may run on, and pinning a thread to one.

/// The cores this process may run on, in order.
pub fn usable_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Pins the calling thread to `core`; false if the OS refused.
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}
