//! Decodes arbitrary payloads as guest messages and checks any bench report against a
//! request: untrusted JSON must never panic the host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vb_protocol::bench::{BenchRequest, BenchSpec};
use vb_protocol::msg::{GuestMsg, Outcome, ReplyBody};

fuzz_target!(|data: &[u8]| {
    if let Ok(GuestMsg::Reply(r)) = GuestMsg::decode(data) {
        if let Outcome::Ok { body: ReplyBody::Bench(rep) } = r.result {
            let req = BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: 1 };
            let _ = rep.check(&req);
            for i in &rep.instances {
                let _ = i.figure();
            }
        }
    }
});
