//! Decodes arbitrary payloads as guest messages and checks any bench report against a
//! request, with and without a start instant: untrusted JSON must never panic the host.
//! The guest's side of the start instant (`start_instant`) gets the report's arbitrary
//! times too. File chunks (`put_file` requests, `file_data` replies) are checked as well.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vb_protocol::bench::{BenchRequest, BenchSpec};
use vb_protocol::msg::{ExecRequest, GetFile, GuestMsg, Outcome, ReplyBody, Request, Command};

fuzz_target!(|data: &[u8]| {
    if let Ok(GuestMsg::Reply(r)) = GuestMsg::decode(data) {
        if let Outcome::Ok { body: ReplyBody::Bench(rep) } = r.result {
            for start_at_ns in [None, Some(rep.prepared_ns), Some(rep.received_ns.wrapping_add(rep.prepared_ns))] {
                let req = BenchRequest { spec: BenchSpec::Cpu { rounds: 100 }, instances: 1, start_at_ns };
                let _ = rep.check(&req);
                let _ = req.start_instant(rep.received_ns);
            }
            for i in &rep.instances {
                let _ = i.figure();
            }
        }
    }
    if let Ok(GuestMsg::Reply(r)) = GuestMsg::decode(data) {
        if let Outcome::Ok { body: ReplyBody::Exited(e) } = r.result {
            let req = ExecRequest { argv: vec!["true".into()], env: vec![], cwd: None, timeout_ms: 1000, output_max: 4096 };
            let _ = e.check(&req);
        }
    }
    // File chunks (`hostd cp`): a guest's reply against requests at the start, middle and
    // past the end of the bounds; a request's chunk as the agent checks it.
    if let Ok(GuestMsg::Reply(r)) = GuestMsg::decode(data) {
        if let Outcome::Ok { body: ReplyBody::FileData(d) } = r.result {
            for (offset, max) in [(0, 1), (d.size, 4096), (u64::MAX, u32::MAX)] {
                let _ = d.check(&GetFile { path: "/x".into(), offset, max });
            }
        }
    }
    if let Ok(Request { cmd: Command::PutFile(p), .. }) = Request::decode(data) {
        let _ = p.check();
    }
});
