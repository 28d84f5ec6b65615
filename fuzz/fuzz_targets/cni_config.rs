#![no_main]
//! One CNI plugin call's input: `CNI_*` variables (`KEY=value` lines up to a NUL byte),
//! then the network configuration on stdin (with its prevResult), as nodus-bridge reads it.

use libfuzzer_sys::fuzz_target;
use nodus_cni_bridge::config;

fuzz_target!(|data: &[u8]| {
    let (env, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let env = String::from_utf8_lossy(env);
    let get = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let _ = config::peek_version(stdin);
    let Ok(cmd) = config::parse_command(get("CNI_COMMAND").as_deref()) else {
        return;
    };
    if let Ok(env) = config::Env::load(cmd, get) {
        let _ = env.args_map();
        if let Ok(conf) = config::parse(stdin, &env) {
            let _ = format!("{conf:?}");
        }
    }
});
