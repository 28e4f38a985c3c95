//! What the warm-call benchmarks share: closed-loop load on keep-alive connections.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// `d` in microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `clients` closed loops of GET `url` on keep-alive connections for `dur`: every
/// latency, and the time taken.
pub async fn load(url: &str, clients: usize, dur: Duration) -> (Vec<Duration>, Duration) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(clients).build(connector);
    let uri: hyper::Uri = url.parse().unwrap();
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, uri) = (http.clone(), uri.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let resp = http.get(uri.clone()).await.unwrap();
                    assert_eq!(resp.status(), 200, "{uri}");
                    resp.into_body().collect().await.unwrap();
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, start.elapsed())
}
