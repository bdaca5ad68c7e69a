//! Feeds arbitrary bytes, split at arbitrary points, to the frame decoder and decodes every
//! frame it yields as a guest message: nothing may panic, and the decoder's buffer must stay
//! within one maximal frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vb_protocol::frame::{Event, FrameDecoder, HEADER_LEN};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let chunk = (split as usize % 61) + 1;
    let mut dec = FrameDecoder::new(MAX);
    for c in rest.chunks(chunk) {
        for ev in dec.feed(c) {
            if let Event::Frame(p) = ev {
                assert!(p.len() <= MAX);
                if let Ok(vb_protocol::GuestMsg::Hello(h)) = vb_protocol::GuestMsg::decode(&p) {
                    let _ = h.check();
                }
            }
        }
        assert!(dec.buffered() <= HEADER_LEN + MAX);
    }
    let _ = dec.finish();
});
