//! The agent's pull against the real registry and containerd: refusals (architecture,
//! size, wrong bytes, a registry that goes away) end with a clear error and an unchanged
//! cache; concurrent pulls of one image fetch each blob once.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use fnrt_proto::agent::v1::NodeStatusRequest;
use fnrt_tests::proxy::{Fault, RegistryProxy};
use fnrt_tests::{blob_digests, content_digests, image, real_parts, TestAgent};
use tonic::Code;

/// What the node holds: image references and content digests, sorted.
async fn cache(agent: &mut TestAgent) -> (Vec<String>, Vec<String>) {
    let s = agent.client.node_status(NodeStatusRequest {}).await.unwrap().into_inner();
    let mut images: Vec<String> = s.images.into_iter().map(|i| i.reference).collect();
    images.sort();
    let mut content = content_digests(&agent.cfg.containerd_socket, &agent.cfg.namespace).await;
    content.sort();
    (images, content)
}

async fn pull(agent: &mut TestAgent, reference: &str) -> Result<(), tonic::Status> {
    fnrt_tests::pull_image(&mut agent.client, reference).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn images_not_for_amd64_are_refused_and_the_cache_is_unchanged() {
    let mut agent = TestAgent::start().await;
    pull(&mut agent, &image("echo")).await.unwrap();
    let before = cache(&mut agent).await;
    for name in ["arm64-only", "index-no-amd64"] {
        let err = pull(&mut agent, &image(name)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {}", err.message());
        assert!(
            err.message().contains("is for linux/arm64")
                && err
                    .message()
                    .contains("functions run on x86_64, so the image must be built for linux/amd64"),
            "{name}: {}",
            err.message()
        );
        assert_eq!(cache(&mut agent).await, before, "{name} changed the cache");
    }
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_over_1_gib_is_refused_before_any_blob_is_fetched() {
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::None).await;
    let mut agent = TestAgent::start_with(|c| proxy.allow(c)).await;
    let before = cache(&mut agent).await;
    let err = pull(&mut agent, &format!("{}/fnrt/too-large:latest", proxy.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("is 1074000000 bytes, over the limit of 1073741824 bytes (1 GiB)"),
        "{}",
        err.message()
    );
    assert_eq!(proxy.count_containing("/blobs/"), 0, "a blob of the refused image was fetched");
    assert_eq!(proxy.count_containing("/manifests/"), 1);
    assert_eq!(cache(&mut agent).await, before);
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_pulls_fetch_each_blob_once() {
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::None).await;
    let agent = TestAgent::start_with(|c| proxy.allow(c)).await;
    let reference = format!("{}/fnrt/echo:latest", proxy.addr);
    let pulls = (0..20).map(|_| {
        let mut client = agent.client.clone();
        let reference = reference.clone();
        tokio::spawn(async move { fnrt_tests::pull_image(&mut client, &reference).await })
    });
    let mut digests = Vec::new();
    for p in pulls {
        digests.push(p.await.unwrap().unwrap().0.digest);
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "{digests:?}");
    for blob in blob_digests("fnrt/echo").await {
        assert_eq!(proxy.count(&format!("/v2/fnrt/echo/blobs/{blob}")), 1, "blob {blob}");
    }
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_with_the_wrong_bytes_is_refused_and_nothing_of_it_is_kept() {
    let layer = blob_digests("fnrt/echo").await[1].clone();
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::Corrupt(layer.clone())).await;
    let mut agent = TestAgent::start_with(|c| proxy.allow(c)).await;
    let before = cache(&mut agent).await;
    let err = pull(&mut agent, &format!("{}/fnrt/echo:latest", proxy.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());
    assert!(
        err.message().contains(&format!("blob {layer}: received"))
            && err.message().contains("nothing of it was kept"),
        "{}",
        err.message()
    );
    assert_eq!(cache(&mut agent).await, before);
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_goes_away_mid_pull_leaves_nothing_and_the_next_pull_works() {
    let layer = blob_digests("fnrt/echo").await[1].clone();
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::CutAfter(layer, 100_000)).await;
    let mut agent = TestAgent::start_with(|c| proxy.allow(c)).await;
    let before = cache(&mut agent).await;
    let err = pull(&mut agent, &format!("{}/fnrt/echo:latest", proxy.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains(&format!("registry {}", proxy.addr)), "{}", err.message());
    assert_eq!(cache(&mut agent).await, before);
    pull(&mut agent, &image("echo")).await.unwrap();
    agent.cleanup().await;
}

async fn list(agent: &mut TestAgent) -> fnrt_proto::agent::v1::ListImagesResponse {
    agent.client.list_images(fnrt_proto::agent::v1::ListImagesRequest {}).await.unwrap().into_inner()
}

fn names(r: &fnrt_proto::agent::v1::ListImagesResponse) -> Vec<String> {
    let mut n: Vec<String> = r.images.iter().map(|i| i.reference.clone()).collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_evicts_least_recently_used_images_but_never_one_in_use_or_pinned() {
    // Room for one of the two fixture images (about 670 KB each), not for both.
    let mut agent = TestAgent::start_with(|c| c.image_cache_bytes = 1_000_000).await;
    let (echo, silent) = (image("echo"), image("never-listens"));
    let start = fnrt_proto::agent::v1::StartInstanceRequest {
        function: "user".into(),
        image: echo.clone(),
        env: Default::default(),
        memory_mb: 0,
        ..Default::default()
    };
    let inst = agent.client.start_instance(start).await.unwrap().into_inner().instance.unwrap();
    let r = list(&mut agent).await;
    let e = &r.images[0];
    assert!(e.ready && !e.pinned && !e.last_used.is_empty(), "{e:?}");
    assert_eq!(e.used_by, vec![inst.id.clone()]);
    let err = agent
        .client
        .remove_image(fnrt_proto::agent::v1::RemoveImageRequest { reference: echo.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&format!("is used by instances {}", inst.id)), "{}", err.message());

    // Over budget, but the image in use stays.
    fnrt_tests::pull_image(&mut agent.client, &silent).await.unwrap();
    let r = list(&mut agent).await;
    assert_eq!(names(&r), vec![echo.clone(), silent.clone()]);
    assert!(r.cache_bytes > r.budget_bytes);

    // Unused now: the next pull evicts it, and the cache is under budget again.
    agent.client.stop_instance(fnrt_proto::agent::v1::StopInstanceRequest { id: inst.id }).await.unwrap();
    fnrt_tests::pull_image(&mut agent.client, &silent).await.unwrap();
    let r = list(&mut agent).await;
    assert_eq!(names(&r), vec![silent.clone()]);
    assert!(r.cache_bytes <= r.budget_bytes, "{} > {}", r.cache_bytes, r.budget_bytes);

    // A pinned prefetch evicts the other; a later pull never evicts the pinned one.
    let req = fnrt_proto::agent::v1::PrefetchImageRequest {
        reference: echo.clone(),
        pin: true,
        registry_credentials: None,
    };
    let mut stream = agent.client.prefetch_image(req).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    let r = list(&mut agent).await;
    assert_eq!(names(&r), vec![echo.clone()]);
    assert!(r.images[0].pinned);
    fnrt_tests::pull_image(&mut agent.client, &silent).await.unwrap();
    assert_eq!(names(&list(&mut agent).await), vec![echo.clone(), silent.clone()]);

    agent.client.remove_image(fnrt_proto::agent::v1::RemoveImageRequest { reference: silent }).await.unwrap();
    assert_eq!(names(&list(&mut agent).await), vec![echo]);
    agent.cleanup().await;
}

/// Writes a credentials file for `registry` and returns its path (kept by `dir`).
fn auth_file(dir: &std::path::Path, registry: &str, user: &str, pass: &str) -> std::path::PathBuf {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join("auth.json");
    std::fs::write(&path, format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn registries_that_ask_for_basic_or_bearer_auth_get_it_and_secrets_stay_secret() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, fault) in [
        ("basic", Fault::Basic("fn-user".into(), "pw-basic-9c1".into())),
        ("bearer", Fault::Bearer("fn-user".into(), "pw-bearer-7d3".into())),
    ] {
        let proxy = RegistryProxy::start(&real_parts().registry, fault.clone()).await;
        let reference = format!("{}/fnrt/echo:latest", proxy.addr);
        let password = match &fault {
            Fault::Basic(_, p) | Fault::Bearer(_, p) => p.clone(),
            _ => unreachable!(),
        };

        // No credentials: refused, and the message says where they would come from.
        let mut agent = TestAgent::start_with(|c| proxy.allow(c)).await;
        let err = pull(&mut agent, &reference).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{kind}: {}", err.message());
        assert!(err.message().contains("there are none for this registry"), "{kind}: {}", err.message());
        agent.cleanup().await;

        // Wrong password: refused, and the password given appears nowhere.
        let wrong = auth_file(dir.path(), &proxy.addr.to_string(), "fn-user", "wrong-pw-0");
        let mut agent = TestAgent::start_with(|c| {
            proxy.allow(c);
            c.registry_auth_file = Some(wrong);
        })
        .await;
        let err = pull(&mut agent, &reference).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{kind}: {}", err.message());
        assert!(!err.message().contains("wrong-pw-0"), "{kind}: {}", err.message());
        agent.cleanup().await;

        // The right ones: the pull works.
        let right = auth_file(dir.path(), &proxy.addr.to_string(), "fn-user", &password);
        let mut agent = TestAgent::start_with(|c| {
            proxy.allow(c);
            c.registry_auth_file = Some(right);
        })
        .await;
        let (img, _) = fnrt_tests::pull_image(&mut agent.client, &reference).await.unwrap();
        assert_eq!(img.reference, reference);
        let status = agent.client.node_status(NodeStatusRequest {}).await.unwrap().into_inner();
        assert!(!format!("{status:?}").contains(&password));
        agent.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_registries_are_verified_against_the_trusted_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, ca_pem) = RegistryProxy::start_tls(&real_parts().registry, Fault::None).await;
    let reference = format!("{}/fnrt/echo:latest", proxy.addr);
    let https = |c: &mut fnrt_agent::Config| {
        proxy.allow(c);
        c.plain_http_registries = vec![];
    };

    // A CA the agent was not told to trust: the TLS handshake fails, nothing is pulled.
    let mut agent = TestAgent::start_with(https).await;
    let err = pull(&mut agent, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains(&format!("registry {} is unreachable", proxy.addr)), "{}", err.message());
    assert_eq!(cache(&mut agent).await, (vec![], vec![]));
    agent.cleanup().await;

    // Trusted through registry_ca_file: the pull goes over HTTPS.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut agent = TestAgent::start_with(|c| {
        https(c);
        c.registry_ca_file = Some(ca);
    })
    .await;
    let (img, _) = fnrt_tests::pull_image(&mut agent.client, &reference).await.unwrap();
    assert_eq!(img.reference, reference);
    assert!(proxy.count_containing("/blobs/") >= 2);
    agent.cleanup().await;
}
