//! Fuzzes the inbound command decoder: any bytes must give a command or a typed error,
//! never a panic, and a decoded command's identifier must survive re-encoding.
#![no_main]

use ferrocable_protocol::{ClientCommand, ServerFrame, decode_command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_command(data, 64 * 1024) {
        Ok(cmd) => {
            if let Some(id) = cmd.identifier() {
                let frame = ServerFrame::ConfirmSubscription { identifier: id }.encode();
                let v: serde_json::Value =
                    serde_json::from_slice(&frame).expect("encoded frames are JSON");
                assert_eq!(v["identifier"].as_str(), Some(id.as_str()));
            }
            if let ClientCommand::Message { data, .. } = cmd {
                let _ = serde_json::from_str::<serde_json::Value>(&data);
            }
        }
        Err(e) => {
            assert!(!e.code().is_empty());
        }
    }
});
