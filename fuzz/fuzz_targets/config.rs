//! The configuration parser: any text is a configuration or one error
//! naming the key (or the TOML position), never a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = qualcache::config::Config::parse(text, Path::new("fuzz.toml")) {
        assert!(!e.to_string().is_empty());
    }
});
