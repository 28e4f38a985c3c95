//! Hostile input at the image edge, against the real registry and containerd: crafted
//! layers (a symlink out of the layer with missing components beneath it, a gzip bomb),
//! manifests that lie about sizes or never end, a registry that trickles, and redirects
//! to loopback and to the metadata address (carried by test hosts of this test's own, so
//! no packet leaves the machine), slow clients and oversized bodies on every listener.
//! Each ends with a clear error and nothing kept. The `the_release_*` tests repeat the
//! layer and listener cases through the release binaries as processes.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::io::Write;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::ListImagesRequest;
use fnrt_tests::fake_registry::{FakeRegistry, Reply};
use fnrt_tests::push::{self, sha};
use fnrt_tests::testhost::TestHost;
use fnrt_tests::TestAgent;
use tar::{EntryType, Header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::Code;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn pull(agent: &mut TestAgent, reference: &str) -> Result<(), tonic::Status> {
    fnrt_tests::pull_image(&mut agent.client, reference).await.map(drop)
}

async fn images(agent: &mut TestAgent) -> Vec<String> {
    let list = agent.client.list_images(ListImagesRequest {}).await.unwrap().into_inner();
    list.images.into_iter().map(|i| i.reference).collect()
}

/// A tar of `(path, kind, link)` entries, empty, owned by root.
fn tar_of(entries: &[(&str, EntryType, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_reaching_through_a_symlink_make_nothing_on_the_host() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let mut agent = TestAgent::start().await;
    // The case that made /etc/a/b on the host: components missing beneath the symlink.
    for (second, kind) in [
        ("x/a/b/.wh.f", EntryType::Regular),
        ("x/a/b/.wh..wh..opq", EntryType::Regular),
        ("x/a/pipe", EntryType::Fifo),
        ("x/a/file", EntryType::Regular),
        ("x/a/dir/", EntryType::Directory),
    ] {
        let layer = tar_of(&[("x", EntryType::Symlink, Some(&target)), (second, kind, None)]);
        let diff_id = sha(&layer);
        let reference = push::image("fnrt-test/hostile", vec![(layer, TAR, diff_id)]).await;
        let err = pull(&mut agent, &reference).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{second}: {}", err.message());
        assert!(err.message().contains(&format!("layer entry {second}")), "{}", err.message());
        assert!(err.message().contains("points outside the layer"), "{}", err.message());
        let made: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(made.is_empty(), "{second} made {made:?} outside the layer");
    }
    assert_eq!(images(&mut agent).await, Vec::<String>::new());
    agent.cleanup().await;
}

/// The same through the release agent as a process, pulled with agentctl as an operator
/// would: refused with the entry named, nothing made outside, no image kept.
#[tokio::test(flavor = "multi_thread")]
async fn the_release_agent_refuses_a_layer_reaching_through_a_symlink() {
    use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let cp = ShippedControlPlane::start(&[]).await;
    let agent = ShippedAgent::start(&cp).await;
    let layer =
        tar_of(&[("x", EntryType::Symlink, Some(&target)), ("x/a/b/.wh.f", EntryType::Regular, None)]);
    let diff_id = sha(&layer);
    let reference = push::image("fnrt-test/hostile", vec![(layer, TAR, diff_id)]).await;
    let (code, out, err) = agent.agentctl(&["image", "pull", &reference]).await;
    assert_ne!(code, 0, "pulled: {out}");
    assert!(err.contains("layer entry x/a/b/.wh.f") && err.contains("points outside the layer"), "{err}");
    let made: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(made.is_empty(), "the release agent made {made:?} outside the layer");
    let (code, out, err) = agent.agentctl(&["image", "ls"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hostile"), "the refused image is kept: {out}");
    cp.stop().await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_stops_at_the_nodes_unpack_budget() {
    // 128 MiB of zeros in well under a megabyte, streamed into the compressor.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    {
        let mut b = tar::Builder::new(&mut gz);
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(128 << 20);
        h.set_path("zeros").unwrap();
        h.set_cksum();
        b.append(&h, std::io::Read::take(std::io::repeat(0), 128 << 20)).unwrap();
        b.finish().unwrap();
    }
    gz.flush().unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    // The bomb never unpacks whole, so its diff ID is never compared: any will do.
    let reference = push::image("fnrt-test/hostile", vec![(bomb, GZIP, sha(b""))]).await;
    let mut agent = TestAgent::start_with(|c| c.image_max_unpacked_bytes = 32 << 20).await;
    let err = pull(&mut agent, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("unpacks to more than 33554432 bytes")
            && err.message().contains("image_max_unpacked_bytes"),
        "{}",
        err.message()
    );
    assert_eq!(images(&mut agent).await, Vec::<String>::new());
    agent.cleanup().await;
}

/// A fake registry's manifest of one config and `layers` (media type, digest, size).
fn manifest_of(config: &[u8], layers: &[(&str, String, u64)]) -> Vec<u8> {
    push::manifest((&sha(config), config.len()), layers)
}

#[tokio::test(flavor = "multi_thread")]
async fn sizes_that_overflow_and_manifests_that_never_end_are_refused() {
    let config = push::config(&[sha(b"a"), sha(b"b")]);
    let huge = 1u64 << 63;
    let overflow = manifest_of(&config, &[(GZIP, sha(b"1"), huge), (GZIP, sha(b"2"), huge)]);
    let lying = FakeRegistry::on_loopback(move |path| match path.contains("/manifests/") {
        true => Reply::Bytes(overflow.clone(), MANIFEST),
        false => Reply::Status(404),
    });
    let endless = FakeRegistry::on_loopback(|_| Reply::Endless(100 << 20));
    let mut agent = TestAgent::start_with(|c| {
        c.allowed_registries.push(lying.addr.to_string());
        c.allowed_registries.push(endless.addr.to_string());
    })
    .await;

    // Two layers of 2^63 bytes are not 0 bytes.
    let err = pull(&mut agent, &format!("{}/x/y:t", lying.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("over the limit of 1073741824 bytes"), "{}", err.message());
    assert!(!lying.asked().iter().any(|p| p.contains("/blobs/")), "{:?}", lying.asked());

    // A 100 MB manifest: read up to 4 MiB, then refused.
    let t0 = Instant::now();
    let err = pull(&mut agent, &format!("{}/x/y:t", endless.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("sent more than 4194304 bytes"), "{}", err.message());
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_eq!(images(&mut agent).await, Vec::<String>::new());
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_trickles_is_given_up_at_the_transfer_deadline() {
    let config = push::config(&[sha(b"layer")]);
    let manifest = manifest_of(&config, &[(TAR, sha(b"layer"), 1000)]);
    let config_digest = sha(&config);
    let trickle = FakeRegistry::on_loopback(move |path| {
        if path.contains("/manifests/") {
            Reply::Bytes(manifest.clone(), MANIFEST)
        } else if path.ends_with(&config_digest) {
            Reply::Bytes(config.clone(), "application/octet-stream")
        } else {
            Reply::Trickle(1000)
        }
    });
    let mut agent = TestAgent::start_with(|c| {
        c.allowed_registries.push(trickle.addr.to_string());
        c.registry_transfer_timeout_s = 3;
    })
    .await;
    let t0 = Instant::now();
    let err = pull(&mut agent, &format!("{}/x/y:t", trickle.addr)).await.unwrap_err();
    let took = t0.elapsed();
    assert!(err.message().contains("registry_transfer_timeout_s"), "{}", err.message());
    assert!(took < Duration::from_secs(15), "the pull took {took:?}");
    assert_eq!(images(&mut agent).await, Vec::<String>::new());
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_to_the_metadata_address_or_to_loopback_are_refused() {
    // The metadata address is a test host of this test's own: were the redirect
    // followed, it would show there, and nothing would leave the machine.
    let metadata = TestHost::start("169.254.169.254".parse().unwrap());
    metadata.listener.set_nonblocking(true).unwrap();
    let to_metadata =
        FakeRegistry::on_loopback(|_| Reply::Redirect("http://169.254.169.254/latest/meta-data/".into()));

    // A registry on a public address (another test host) redirecting to the node's
    // loopback, where a listener counts what reaches it.
    let local = FakeRegistry::on_loopback(|_| Reply::Status(200));
    let public = TestHost::start("203.0.113.30".parse().unwrap());
    let target = format!("http://{}/v2/x/y/manifests/t", local.addr);
    let to_loopback =
        FakeRegistry::serve(public.listener.try_clone().unwrap(), move |_| Reply::Redirect(target.clone()));

    let mut agent = TestAgent::start_with(|c| {
        c.allowed_registries.push(to_metadata.addr.to_string());
        c.plain_http_registries.push("203.0.113.30".into());
    })
    .await;
    let err = pull(&mut agent, &format!("{}/x/y:t", to_metadata.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("169.254.169.254, a link-local address, refused"), "{}", err.message());
    let reached = metadata.listener.accept();
    assert!(reached.is_err(), "the redirect reached the metadata address");

    let err = pull(&mut agent, "203.0.113.30/x/y:t").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("127.0.0.1, a loopback address, refused"), "{}", err.message());
    assert_eq!(to_loopback.asked().len(), 1, "{:?}", to_loopback.asked());
    assert!(local.asked().is_empty(), "the redirect reached the node's loopback: {:?}", local.asked());

    // Nor may a reference name the node's own services.
    let err = pull(&mut agent, &format!("{}/x/y:t", local.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("its address is loopback and only listed registries may be"),
        "{}",
        err.message()
    );
    assert!(local.asked().is_empty(), "{:?}", local.asked());
    assert_eq!(images(&mut agent).await, Vec::<String>::new());
    agent.cleanup().await;
    public.remove();
    metadata.remove();
}

/// Sends a request's headers one byte a second on `s`; true when the server closed the
/// connection before they were whole.
async fn closed_on_a_slow_client<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> bool {
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            return true;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1000), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => return false,
        }
    }
    false
}

/// Sends `head` (announcing a body it never sends) on `s`; the start of the answer.
async fn answer_before_the_body<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, head: &str) -> String {
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("an answer before the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

async fn tcp(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_closed_and_oversized_bodies_refused_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(fnrt_controlplane::Config {
        http_header_timeout_ms: 2000,
        ..fnrt_tests::controlplane_config(dir.path(), "a-cluster-token-of-at-least-32-characters")
    })
    .await
    .unwrap();
    let agent = TestAgent::start_with(|c| c.http_header_timeout_ms = 2000).await;
    for (name, addr) in [
        ("the API", cp.api_address),
        ("the gateway", cp.gateway_address),
        ("the data plane", agent.handle.dataplane_address),
    ] {
        let t0 = Instant::now();
        assert!(
            closed_on_a_slow_client(tcp(addr).await).await,
            "{name} kept a client sending a byte a second"
        );
        assert!(t0.elapsed() < Duration::from_secs(6), "{name} took {:?}", t0.elapsed());
    }
    // Bodies over 6 MB are refused on their announced length, before they are sent.
    for (name, url) in [
        ("the gateway", format!("http://{}/ns/f/", cp.gateway_address)),
        ("the data plane", format!("http://{}/function/f/", agent.handle.dataplane_address)),
    ] {
        let s = tcp(url.split('/').nth(2).unwrap().parse().unwrap()).await;
        let path = url.splitn(4, '/').nth(3).unwrap();
        let head = format!("POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 7000000\r\n\r\n");
        let text = answer_before_the_body(s, &head).await;
        assert!(text.starts_with("HTTP/1.1 413"), "{name}: {text}");
        assert!(text.contains("max_body_bytes"), "{name}: {text}");
    }
    agent.cleanup().await;
    cp.shutdown().await;
}

/// The same through the release binaries as processes: the control plane's API and
/// gateway, and the agent's data plane beyond loopback (mutual TLS: the client holds the
/// control plane's certificate, and signs its call as the gateway does).
#[tokio::test(flavor = "multi_thread")]
async fn the_release_listeners_close_slow_clients_and_refuse_oversized_bodies() {
    use fnrt_tests::shipped::{ShippedAgent, ShippedControlPlane};
    let cp = ShippedControlPlane::start(&["http_header_timeout_ms=2000".into()]).await;
    let agent = ShippedAgent::start_with(&cp, |c| c.http_header_timeout_ms = 2000).await;
    let node = agent.client.clone().node_status(fnrt_proto::agent::v1::NodeStatusRequest {}).await.unwrap();
    let port: u16 = node.into_inner().dataplane_address.rsplit(':').next().unwrap().parse().unwrap();
    let dataplane: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let tls = fnrt_common::pki::ClusterTls::load(
        &cp.ca.join("ca.pem"),
        &cp.ca.join("controlplane.pem"),
        &cp.ca.join("controlplane.key"),
        fnrt_common::pki::Role::ControlPlane,
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls.client_config().unwrap()));
    // The node's certificate names the node.
    let node_name = rustls::pki_types::ServerName::try_from(agent.cfg.node_name.clone()).unwrap();
    let tls_to = |addr| {
        let (connector, name) = (connector.clone(), node_name.clone());
        async move { connector.connect(name, tcp(addr).await).await.unwrap() }
    };
    let api: std::net::SocketAddr = cp.api.trim_start_matches("http://").parse().unwrap();
    let gateway: std::net::SocketAddr = cp.gateway.trim_start_matches("http://").parse().unwrap();
    for (name, closed) in [
        ("the API", closed_on_a_slow_client(tcp(api).await).await),
        ("the gateway", closed_on_a_slow_client(tcp(gateway).await).await),
        ("the data plane", closed_on_a_slow_client(tls_to(dataplane).await).await),
    ] {
        assert!(closed, "the release {name} kept a client sending a byte a second");
    }
    let head = |path: &str, extra: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 7000000\r\n\r\n")
    };
    let text = answer_before_the_body(tcp(gateway).await, &head("/ns/f/", "")).await;
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("max_body_bytes"), "the gateway: {text}");
    let path = "/function/f/";
    let (time, sig) = fnrt_common::signature::Key::new(&cp.dataplane_key).sign("POST", path, "");
    let signed = format!(
        "{}: {time}\r\n{}: {sig}\r\n",
        fnrt_common::signature::TIME,
        fnrt_common::signature::SIGNATURE
    );
    let text = answer_before_the_body(tls_to(dataplane).await, &head(path, &signed)).await;
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("max_body_bytes"), "the data plane: {text}");
    cp.stop().await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_write_and_rename_leaves_the_old_state_or_none_and_nothing_aside() {
    // The release control plane, killed (abort) at the failpoint between writing its new
    // admin token aside and renaming it into place, on its first start.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bin = fnrt_tests::shipped::release_bin("fnrt-controlplane");
    let run = |failpoint: bool| {
        let mut c = std::process::Command::new(&bin);
        for (k, v) in [
            ("state_dir", state.display().to_string()),
            ("cluster_token", "a-cluster-token-of-at-least-32-characters".to_string()),
            ("api_listen", "127.0.0.1:0".to_string()),
            ("gateway_listen", "127.0.0.1:0".to_string()),
            ("grpc_listen", "127.0.0.1:0".to_string()),
            ("metrics_listen", "127.0.0.1:0".to_string()),
        ] {
            c.arg("--set").arg(format!("{k}={v}"));
        }
        if failpoint {
            c.env("FNRT_FAILPOINT", "durable-before-rename");
        }
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap()
    };
    let status = run(true).wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(6),
        "aborted at the failpoint: {status}"
    );
    let left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.contains(&"admin-token".to_string()), "no half admin token: {left:?}");
    assert!(left.iter().any(|n| n.starts_with(".admin-token.") && n.ends_with(".tmp")), "{left:?}");

    // The next start makes the token whole and sweeps what the crash left aside.
    let mut cp = run(false);
    let token = state.join("admin-token");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&token).map(|t| t.trim().len()).unwrap_or(0) < 32 {
        assert!(Instant::now() < deadline, "the control plane did not make its admin token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = cp.kill();
    let _ = cp.wait();
    let left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.ends_with(".tmp")), "a crash's file was left: {left:?}");
}
