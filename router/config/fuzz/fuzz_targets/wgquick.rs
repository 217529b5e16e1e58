//! `wgquick::parse` must not panic on any input, and no diagnostic may quote anything that
//! looks like key material (a run of 40 or more base64 characters).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sitelink_config::wgquick::{parse, Diag};

fn longest_base64_run(s: &str) -> usize {
    let (mut best, mut run) = (0usize, 0usize);
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-') {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

fn check(d: &Diag) {
    assert!(d.line >= 1, "line numbers are 1-based: {d:?}");
    let text = d.to_string();
    assert!(
        longest_base64_run(&text) < 40,
        "diagnostic may quote key material: {text}"
    );
}

fuzz_target!(|data: &[u8]| {
    // Valid UTF-8 as is; anything else as the lossy text an importer would read.
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(w) => {
            w.warnings.iter().for_each(check);
            for p in &w.peers {
                assert!(p.line >= 1);
                assert_eq!(p.public_key.to_base64().len(), 44);
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "Err with no diagnostics");
            errors.iter().for_each(check);
        }
    }
});
