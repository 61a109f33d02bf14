//! The watch against a stand-in API server on 127.0.0.1 that answers kube's real HTTP requests
//! with recorded responses: list, watch events, a bookmark, an end of stream, 410 Gone, relist.

use std::{convert::Infallible, time::Duration};

use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response,
    body::{Bytes, Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::enrich::attribution::pods::tests::*;

type Body = UnsyncBoxBody<Bytes, Infallible>;

enum Reply {
    Json(&'static str),
    /// An error answer, as the API server gives when overloaded or restarting.
    Status(u16, &'static str),
    /// A watch response: one line per event sent, ended when the sender is dropped.
    Stream(mpsc::UnboundedReceiver<String>),
}

/// Hands every request to the test, which answers it.
struct FakeApiServer {
    url: String,
    requests: mpsc::UnboundedReceiver<(String, oneshot::Sender<Reply>)>,
}

impl FakeApiServer {
    async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (to_test, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let to_test = to_test.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let to_test = to_test.clone();
                    async move {
                        let (answer, reply) = oneshot::channel();
                        let _ = to_test.send((request.uri().to_string(), answer));
                        let mut status = 200;
                        let body: Body = match reply.await {
                            Ok(Reply::Json(json)) => {
                                Full::new(Bytes::from_static(json.as_bytes())).boxed_unsync()
                            }
                            Ok(Reply::Status(code, json)) => {
                                status = code;
                                Full::new(Bytes::from_static(json.as_bytes())).boxed_unsync()
                            }
                            Ok(Reply::Stream(lines)) => {
                                let frames = futures::stream::unfold(lines, |mut lines| async move {
                                    let line = lines.recv().await?;
                                    Some((Ok(Frame::data(Bytes::from(line + "\n"))), lines))
                                });
                                StreamBody::new(frames).boxed_unsync()
                            }
                            Err(_) => Full::new(Bytes::new()).boxed_unsync(),
                        };
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json");
                        Ok::<_, Infallible>(response.body(body).unwrap())
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        FakeApiServer { url, requests }
    }

    /// The next request's path and query, and where to send its answer.
    async fn next(&mut self) -> (String, oneshot::Sender<Reply>) {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("no request from the watcher within 10 s")
            .expect("server gone")
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn query(uri: &str) -> Vec<(String, String)> {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.replace("%3D", "=").replace("%3d", "="))
        })
        .collect()
}

fn param(uri: &str, name: &str) -> Option<String> {
    query(uri).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn assert_list(uri: &str) {
    assert!(
        uri.starts_with("/api/v1/pods?"),
        "not a cluster-wide pod list: {uri}"
    );
    assert_eq!(param(uri, "watch"), None, "{uri}");
    assert_eq!(
        param(uri, "fieldSelector").as_deref(),
        Some("spec.nodeName=node-a"),
        "{uri}"
    );
    // Served from the API server's cache, not a quorum read.
    assert_eq!(param(uri, "resourceVersion").as_deref(), Some("0"), "{uri}");
}

fn assert_watch(uri: &str, from: &str) {
    assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
    assert_eq!(param(uri, "watch").as_deref(), Some("true"), "{uri}");
    assert_eq!(
        param(uri, "fieldSelector").as_deref(),
        Some("spec.nodeName=node-a"),
        "{uri}"
    );
    assert_eq!(param(uri, "resourceVersion").as_deref(), Some(from), "{uri}");
    assert_eq!(
        param(uri, "allowWatchBookmarks").as_deref(),
        Some("true"),
        "{uri}"
    );
}

#[tokio::test]
async fn follows_list_watch_bookmark_and_relist_from_the_api_server() {
    let mut api = FakeApiServer::start().await;
    let client = Client::try_from(Config::new(api.url.parse().unwrap())).unwrap();
    let index = PodIndex::new(Duration::ZERO);
    let follower = tokio::spawn({
        let index = index.clone();
        async move { follow(client, "node-a", index).await }
    });
    let events: Vec<&str> = WATCH.lines().collect();

    // 1. The initial list.
    let (uri, reply) = api.next().await;
    assert_list(&uri);
    reply.send(Reply::Json(LIST)).ok().unwrap();
    eventually("the list is indexed", || index.is_synced()).await;
    assert_eq!(
        index.lookup(WEB_UID, ENVOY),
        pod_ref("default", "web-7d4b9c6f5-x2x9q", Some("envoy"))
    );
    assert_eq!(
        index.lookup(APISERVER_STATIC_UID, APISERVER).unwrap().pod,
        "kube-apiserver-node-a"
    );

    // 2. A watch from the list's resourceVersion; events apply one by one.
    let (uri, reply) = api.next().await;
    assert_watch(&uri, "1000");
    let (send, lines) = mpsc::unbounded_channel();
    reply.send(Reply::Stream(lines)).ok().unwrap();
    send.send(events[0].to_string()).unwrap(); // ADDED node-exporter
    eventually("ADDED", || index.lookup(EXPORTER_UID, EXPORTER).is_some()).await;
    assert_eq!(
        index.lookup(EXPORTER_UID, EXPORTER),
        pod_ref("monitoring", "node-exporter-abcde", Some("node-exporter"))
    );
    send.send(events[1].to_string()).unwrap(); // MODIFIED cart-0: now has a container id
    eventually("MODIFIED", || {
        index
            .lookup(CART_UID, CART)
            .is_some_and(|p| p.container.is_some())
    })
    .await;
    send.send(events[2].to_string()).unwrap(); // DELETED web
    eventually("DELETED", || index.lookup(WEB_UID, WEB).is_none()).await;
    send.send(events[3].to_string()).unwrap(); // BOOKMARK at 1010
    drop(send); // the API server ends the watch (timeoutSeconds)

    // 3. The watcher resumes from the bookmark, without a list.
    let (uri, reply) = api.next().await;
    assert_watch(&uri, "1010");
    let (send, lines) = mpsc::unbounded_channel();
    reply.send(Reply::Stream(lines)).ok().unwrap();
    send.send(events[4].to_string()).unwrap(); // ERROR 410 Gone: too old

    // 4. 410 means relist; what the relist lacks is gone.
    let (uri, reply) = api.next().await;
    assert_list(&uri);
    reply.send(Reply::Json(RELIST)).ok().unwrap();
    eventually("the relist is indexed", || index.lookup(WEB2_UID, WEB2).is_some()).await;
    eventually("node-exporter forgotten", || {
        index.lookup(EXPORTER_UID, EXPORTER).is_none()
    })
    .await;
    assert_eq!(
        index.lookup(CART_UID, CART),
        pod_ref("shop", "cart-0", Some("cart"))
    );
    assert_eq!(index.live_pods(), 3);
    let (uri, _reply) = api.next().await;
    assert_watch(&uri, "2000");
    drop(send);
    follower.abort();
}

#[tokio::test]
async fn a_failed_watch_is_retried_from_where_it_was_and_keeps_the_index() {
    let mut api = FakeApiServer::start().await;
    let client = Client::try_from(Config::new(api.url.parse().unwrap())).unwrap();
    let index = PodIndex::new(Duration::ZERO);
    let follower = tokio::spawn({
        let index = index.clone();
        async move { follow(client, "node-a", index).await }
    });
    let (_, reply) = api.next().await;
    reply.send(Reply::Json(LIST)).ok().unwrap();
    eventually("the list is indexed", || index.is_synced()).await;
    let (uri, reply) = api.next().await;
    assert_watch(&uri, "1000");
    reply.send(Reply::Status(503, UNAVAILABLE)).ok().unwrap();
    // The watcher backs off and asks again from where it was; nothing known is dropped meanwhile.
    let (uri, reply) = api.next().await;
    assert_watch(&uri, "1000");
    assert_eq!(
        index.lookup(WEB_UID, WEB).map(|p| p.pod),
        Some("web-7d4b9c6f5-x2x9q".into())
    );
    let (send, lines) = mpsc::unbounded_channel();
    reply.send(Reply::Stream(lines)).ok().unwrap();
    send.send(WATCH.lines().next().unwrap().to_string()).unwrap();
    eventually("ADDED after the retry", || {
        index.lookup(EXPORTER_UID, EXPORTER).is_some()
    })
    .await;
    follower.abort();
}

const UNAVAILABLE: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#;

#[test]
fn node_name_comes_from_the_flag_or_says_how_to_set_it() {
    assert_eq!(node_name(Some("node-a")).unwrap(), "node-a");
    // SAFETY: no other test reads NODE_NAME.
    unsafe { std::env::remove_var("NODE_NAME") };
    let err = node_name(None).unwrap_err().to_string();
    assert!(err.contains("NODE_NAME") && err.contains("--node-name"), "{err}");
}
