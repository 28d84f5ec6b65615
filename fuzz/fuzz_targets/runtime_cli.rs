#![no_main]
//! nodus-runtime's command line (runc's): the input is the argument list, NUL-separated
//! (bytes kept as they are, so arguments that are not UTF-8 are tried too). What parses is
//! turned into what each command builds before it touches the system: an exec's process,
//! an update's resources, an events interval, a kill's signal.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use nodus_runtime::cli;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let Ok((opts, cmd)) = cli::parse(args) else {
        return;
    };
    let _ = opts.id(cmd.as_deref().unwrap_or(""));
    let _ = opts.num::<u32>("preserve-fds");
    let _ = cli::exec_process(&opts, Default::default());
    let _ = cli::update_resources(&opts, Default::default());
    let _ = cli::interval(&opts);
    if let Some(signal) = opts.pos.get(1) {
        let _ = nodus_runtime::util::parse_signal(signal);
    }
});
