//! The agent's pull against the real registry and containerd: refusals (architecture,
//! size, wrong bytes, a registry that goes away) end with a clear error and an unchanged
//! cache; concurrent pulls of one image fetch each blob once.
#![allow(missing_docs, clippy::unwrap_used)]

use fnrt_proto::agent::v1::{NodeStatusRequest, PullImageRequest};
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
    agent.client.pull_image(PullImageRequest { reference: reference.into() }).await.map(|_| ())
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
    let mut agent = TestAgent::start().await;
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::None).await;
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
    let agent = TestAgent::start().await;
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::None).await;
    let reference = format!("{}/fnrt/echo:latest", proxy.addr);
    let pulls = (0..20).map(|_| {
        let mut client = agent.client.clone();
        let reference = reference.clone();
        tokio::spawn(async move { client.pull_image(PullImageRequest { reference }).await })
    });
    let mut digests = Vec::new();
    for p in pulls {
        digests.push(p.await.unwrap().unwrap().into_inner().image.unwrap().digest);
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
    let mut agent = TestAgent::start().await;
    let layer = blob_digests("fnrt/echo").await[1].clone();
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::Corrupt(layer.clone())).await;
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
    let mut agent = TestAgent::start().await;
    let layer = blob_digests("fnrt/echo").await[1].clone();
    let proxy = RegistryProxy::start(&real_parts().registry, Fault::CutAfter(layer, 100_000)).await;
    let before = cache(&mut agent).await;
    let err = pull(&mut agent, &format!("{}/fnrt/echo:latest", proxy.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains(&format!("registry {}", proxy.addr)), "{}", err.message());
    assert_eq!(cache(&mut agent).await, before);
    pull(&mut agent, &image("echo")).await.unwrap();
    agent.cleanup().await;
}
