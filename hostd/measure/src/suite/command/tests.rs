use super::*;

fn cmd(t: &str) -> Result<Vec<UserCommand>, String> {
    #[derive(Deserialize)]
    struct W {
        commands: Vec<UserCommand>,
    }
    let w: W = toml::from_str(t).map_err(|e| e.to_string())?;
    check_all("workloads", &w.commands).map_err(|(f, why)| format!("field `{f}`: {why}"))?;
    Ok(w.commands)
}

#[test]
fn commands_parse_with_defaults() {
    let c = cmd("[[commands]]\nname = \"loop\"\nargv = [\"/bin/sh\", \"-c\", \"echo 'a b'\"]\n")
        .unwrap();
    assert_eq!(c[0].timeout_s, DEFAULT_TIMEOUT_S);
    assert_eq!(c[0].line(), r#"/bin/sh -c 'echo '\''a b'\'''"#);
    assert_eq!(c[0].digest().len(), 8);
    let other = UserCommand { argv: vec!["true".into()], ..c[0].clone() };
    assert_ne!(c[0].digest(), other.digest());
    let r = c[0].request();
    assert_eq!((r.timeout_ms, r.output_max, r.env.len()), (600_000, OUTPUT_MAX, 0));
    let c = cmd("[[commands]]\nname = \"x\"\nargv = [\"true\"]\ntimeout_s = 5\ncwd = \"/tmp\"\nenv = { LC_ALL = \"C\", N = \"3\" }\n").unwrap();
    assert_eq!(c[0].request().env, ["LC_ALL=C", "N=3"]);
    assert_eq!(c[0].request().cwd.as_deref(), Some("/tmp"));
}

#[test]
fn bad_commands_are_refused_naming_the_field() {
    let bad = |t: &str, field: &str| {
        let e = cmd(t).unwrap_err();
        assert!(e.contains(field), "{t:?}: {e}");
    };
    bad("[[commands]]\nname = \"a\"\nargv = []\n", "commands[0].argv");
    bad("[[commands]]\nname = \"a\"\nargv = [\"\"]\n", "commands[0].argv");
    bad("[[commands]]\nname = \"A b\"\nargv = [\"true\"]\n", "commands[0].name");
    bad("[[commands]]\nname = \"\"\nargv = [\"true\"]\n", "commands[0].name");
    bad(&format!("[[commands]]\nname = \"{}\"\nargv = [\"true\"]\n", "a".repeat(33)), "name");
    bad(
        "[[commands]]\nname = \"a\"\nargv = [\"true\"]\n[[commands]]\nname = \"a\"\nargv = [\"false\"]\n",
        "commands[1].name",
    );
    bad("[[commands]]\nname = \"a\"\nargv = [\"true\"]\ntimeout_s = 0\n", "timeout_s");
    bad("[[commands]]\nname = \"a\"\nargv = [\"true\"]\ntimeout_s = 999999\n", "timeout_s");
    bad("[[commands]]\nname = \"a\"\nargv = [\"true\"]\ncwd = \"tmp\"\n", "cwd");
    bad("[[commands]]\nname = \"a\"\nargv = [\"true\"]\nenv = { \"A=B\" = \"c\" }\n", "env");
    bad("[[commands]]\nname = \"a\"\nargv = [\"a\\u0000b\"]\n", "NUL");
    bad(&format!("[[commands]]\nname = \"a\"\nargv = [\"{}\"]\n", "x".repeat(70_000)), "exceed");
    assert!(cmd("[[commands]]\nname = \"a\"\nargv = [\"true\"]\nshell = true\n")
        .unwrap_err()
        .contains("unknown field"));
}

fn exec(status: Option<i32>, signal: Option<i32>, timed_out: bool, stderr: &str) -> ExecResult {
    ExecResult {
        status,
        signal,
        timed_out,
        stdout: String::new(),
        stderr: stderr.into(),
        truncated: false,
        duration_ns: 1,
    }
}

#[test]
fn failures_say_why_with_the_end_of_stderr() {
    assert_eq!(failure_of(&exec(Some(0), None, false, "warning"), 5), None);
    assert_eq!(
        failure_of(&exec(Some(3), None, false, "no such file\n"), 5).unwrap(),
        "exit status 3; stderr ends: no such file"
    );
    assert_eq!(
        failure_of(&exec(None, Some(9), true, ""), 5).unwrap(),
        "timed out after 5 s (killed)"
    );
    assert_eq!(failure_of(&exec(None, Some(11), false, ""), 5).unwrap(), "killed by signal 11");
    let long = format!("{}é{}", "a".repeat(3000), "z".repeat(REASON_TAIL - 1));
    let why = failure_of(&exec(Some(1), None, false, &long), 5).unwrap();
    assert!(why.ends_with(&"z".repeat(REASON_TAIL - 1)) && why.len() < REASON_TAIL + 40, "{why}");
}

fn s(
    b: BackendKind,
    test: Test,
    n: usize,
    rep: u32,
    guest: usize,
    t: Option<f64>,
) -> CommandSample {
    CommandSample {
        backend: b,
        test,
        name: "w".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), "x".into()],
        n,
        rep,
        guest,
        elapsed_s: t,
        host_s: t.unwrap_or(0.1) + 0.01,
        failure: t.is_none().then(|| "exit status 1".into()),
        cpus: Some(1),
        vcpus: None,
        provenance: String::new(),
    }
}

#[test]
fn analysed_with_the_microbenchmarks_formulas_failed_runs_left_out() {
    use BackendKind::{Native, Ns};
    let v = vec![
        s(Native, Test::Overhead, 1, 0, 0, Some(2.0)),
        s(Native, Test::Overhead, 1, 1, 0, Some(2.0)),
        s(Ns, Test::Overhead, 1, 0, 0, Some(2.5)),
        s(Ns, Test::Overhead, 1, 1, 0, None),
        s(Ns, Test::Linearity, 2, 0, 0, Some(5.0)),
        s(Ns, Test::Linearity, 2, 0, 1, Some(5.5)),
        // A repetition with one failed guest is left out whole.
        s(Ns, Test::Linearity, 2, 1, 0, Some(1.0)),
        s(Ns, Test::Linearity, 2, 1, 1, None),
    ];
    let r = analyse(&v, 4);
    assert_eq!(r.len(), 2);
    let ns = r.iter().find(|r| r.backend == Ns).unwrap();
    assert_eq!((ns.runs, ns.failed, ns.failures.len()), (6, 2, 2));
    assert!(ns.failures[0].starts_with("overhead n=1 rep 1 guest 0: exit status 1"));
    assert_eq!(ns.baseline.as_ref().unwrap().mean, 2.0);
    // O_v1 = 2.5 − 2.0, by overhead::analyse.
    let o = &ns.overhead[0];
    assert_eq!((o.n, o.value.samples, o.overhead), (1, 1, Some(0.5)));
    // Linearity: only rep 0; worst 5.5; reference O_v + T_a·max(1, 2/1) on the recorded
    // single CPU = 0.5 + 4.
    let l = &ns.linearity[0];
    assert_eq!((l.n, l.value.samples, l.worst), (2, 2, 5.5));
    assert!((l.reference.unwrap() - 4.5).abs() < 1e-12);
    // Another command under the same name is another series, with no T_a of its own.
    let mut other = s(Ns, Test::Overhead, 1, 0, 0, Some(1.0));
    other.argv = vec!["true".into()];
    let r = analyse(&[v[0].clone(), other], 4);
    assert!(r.iter().find(|r| r.backend == Ns).unwrap().baseline.is_none());
}

#[test]
fn implausible_samples_are_named() {
    let ok = s(BackendKind::Ns, Test::Overhead, 1, 0, 0, Some(1.0));
    assert_eq!(ok.implausible(), None);
    assert!(CommandSample { elapsed_s: Some(-1.0), ..ok.clone() }.implausible().is_some());
    assert!(CommandSample { failure: Some("x".into()), ..ok.clone() }.implausible().is_some());
    assert!(CommandSample { host_s: f64::NAN, ..ok.clone() }.implausible().is_some());
    assert!(CommandSample { n: 0, ..ok }.implausible().is_some());
}
