//! The shim's own threads (reaper, event publisher, stdio copies, OOM watchers).

/// Stack of the shim's own threads: only touched pages count as resident, so this is a
/// ceiling (debug builds need far more than release ones), not a cost.
const STACK: usize = 512 * 1024;

/// Spawns a named thread with the shim's small stack.
pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK)
        .spawn(f)
        .map(|_| ())
}
