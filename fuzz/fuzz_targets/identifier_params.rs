//! Fuzzes identifier parsing: any text gives params with a channel or a typed error.
#![no_main]

use ferrocable_protocol::Identifier;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Identifier::new(text).params() {
            assert!(!p.channel.is_empty());
            assert_eq!(p.params["channel"].as_str(), Some(p.channel.as_str()));
        }
    }
});
