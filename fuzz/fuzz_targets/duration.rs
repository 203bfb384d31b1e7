//! `reseq_core::Duration::from_str` on any text: never panics, and what parses prints as
//! something that parses back to the same length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reseq_core::Duration;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = text.parse::<Duration>() {
        let shown = d.to_string();
        assert_eq!(shown.parse::<Duration>(), Ok(d), "{text:?} printed as {shown:?}");
    }
});
