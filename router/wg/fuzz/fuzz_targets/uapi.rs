//! Control-socket requests: parse, apply to a device state, render `get`. Must never panic.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use sitelink_wg::{handle_request, uapi, DeviceState, Host};

struct FakeHost;

impl Host for FakeHost {
    fn bind(&mut self, port: u16, _fwmark: u32) -> io::Result<u16> {
        if port == 1 {
            return Err(io::Error::from_raw_os_error(98));
        }
        Ok(port)
    }
    fn set_fwmark(&mut self, _fwmark: u32) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = uapi::parse_request_bytes(data);
    let text = String::from_utf8_lossy(data);
    let mut state = DeviceState::new();
    // Several requests in a row, as one connection may send them.
    for req in text.split("\n\n").take(8) {
        let reply = handle_request(&mut state, &format!("{req}\n\n"), &mut FakeHost);
        assert!(reply.ends_with("\n\n"));
        assert!(reply.contains("errno="));
    }
    let reply = handle_request(&mut state, "get=1\n\n", &mut FakeHost);
    assert!(reply.ends_with("errno=0\n\n"));
});
