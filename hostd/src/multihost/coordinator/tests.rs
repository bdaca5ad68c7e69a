use super::*;
use tokio::io::AsyncWriteExt;

/// What the coordinator makes of a connection that sends `line` first.
async fn first_line(line: Vec<u8>) -> Result<Worker, (bool, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(at).await.unwrap();
        let _ = c.write_all(&line).await;
        // Kept open until the coordinator has judged the line.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (s, _) = l.accept().await.unwrap();
    let r = hello_of(s, "secret").await;
    client.abort();
    // (refused, why)
    r.map_err(|e| match e {
        HelloError::Refused(e) => (true, e.to_string()),
        HelloError::Invalid(e) => (false, e.to_string()),
    })
}

fn hello(token: &str, hostname: &str) -> Vec<u8> {
    let h = Hello {
        token: token.into(),
        hostname: hostname.into(),
        node_id: None,
        node_name: None,
        cpus: 1,
        mem_mib: 100,
        backends: vec![BackendKind::Ns],
        images: BTreeMap::new(),
        addr: Ipv4Addr::LOCALHOST,
    };
    let mut v = serde_json::to_vec(&FromWorker::Hello(h)).unwrap();
    v.push(b'\n');
    v
}

#[tokio::test]
async fn hostile_hellos_are_refused_with_the_worker_and_the_reason() {
    assert_eq!(first_line(hello("secret", "n1")).await.ok().unwrap().name(), "n1");
    // Not ours: refused, the run goes on.
    let (refused, e) = first_line(hello("guess", "n1")).await.err().unwrap();
    assert!(refused && e.contains("127.0.0.1") && e.contains("wrong token"), "{e}");
    let pong = b"{\"msg\":\"pong\",\"seq\":0,\"mono_ns\":1}\n".to_vec();
    let (refused, e) = first_line(pong).await.err().unwrap();
    assert!(refused && e.contains("not a hello"), "{e}");
    let (refused, e) = first_line(b"not json\n".to_vec()).await.err().unwrap();
    assert!(refused && e.contains("not a message"), "{e}");
    let mut long = vec![b'x'; proto::MAX_LINE + 1];
    long.push(b'\n');
    let (refused, e) = first_line(long).await.err().unwrap();
    assert!(refused && e.contains("longer than"), "{e}");
    // Ours (it has the token) but breaking the rules: the run stops, naming it.
    let (refused, e) = first_line(hello("secret", "n1\u{1b}[2J")).await.err().unwrap();
    assert!(!refused && e.contains("127.0.0.1") && e.contains("bad hello"), "{e}");
    assert!(e.contains("hostname"), "{e}");
}

#[test]
fn differing_images_name_the_host() {
    let own: BTreeMap<String, String> = [("agent".to_string(), "a".repeat(64))].into();
    let mut h = own.clone();
    assert!(same_images(&h, &own, "n1").is_ok());
    h.insert("agent".into(), "b".repeat(64));
    let e = same_images(&h, &own, "n2").unwrap_err();
    assert!(e.contains("host n2") && e.contains("agent"), "{e}");
    h.remove("agent");
    assert!(same_images(&h, &own, "n3").unwrap_err().contains("has no image agent"));
    let mut extra = own.clone();
    extra.insert("kernel".into(), "c".repeat(64));
    assert!(same_images(&extra, &own, "n4").unwrap_err().contains("kernel"));
}
