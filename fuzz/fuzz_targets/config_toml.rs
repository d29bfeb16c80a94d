//! The native configuration (`module.toml`): any text gets a configuration
//! or an error, and a configuration written back by `to_toml` (what the
//! daemon persists at install) reads back the same.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = holdfast_config::parse_module(text, Path::new("fuzz.toml")) else {
        return;
    };
    let written = holdfast_config::to_toml(&config);
    match holdfast_config::parse_module(&written, Path::new("written.toml")) {
        Ok(again) => assert_eq!(again, config, "written back:\n{written}"),
        Err(e) => panic!("to_toml wrote what does not parse: {e}\n{written}"),
    }
});
