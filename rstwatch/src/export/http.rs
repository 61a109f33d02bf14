//! The HTTP endpoint: `/metrics` for Prometheus, `/healthz` for probes.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{debug, warn};
use tokio::net::TcpListener;

/// What the endpoint serves: the daemon implements it.
pub trait Exporter: Send + Sync + 'static {
    /// The Prometheus text exposition, brought up to date with the kernel.
    fn metrics(&self) -> anyhow::Result<Vec<u8>>;
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        let why = match err.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "another process already listens there (ss -ltnp 'sport = :{}'); pick another port",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "ports below net.ipv4.ip_unprivileged_port_start ({}) need root or CAP_NET_BIND_SERVICE; \
                 use a port such as 9977",
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                    .map_or_else(|_| "1024".to_string(), |v| v.trim().to_string())
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                "that IP is not an address of this host (or of this network namespace)".to_string()
            }
            _ => "cannot bind that address".to_string(),
        };
        anyhow::Error::new(err).context(format!("cannot listen on --metrics-addr {addr}: {why}"))
    })
}

pub async fn serve(listener: TcpListener, exporter: Arc<dyn Exporter>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener
            .accept()
            .await
            .context("accepting a metrics connection")?;
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let exporter = exporter.clone();
                async move { Ok::<_, Infallible>(respond(&request, exporter.as_ref())) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("metrics connection from {peer}: {err}");
            }
        });
    }
}

fn respond<B>(request: &Request<B>, exporter: &dyn Exporter) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match exporter.metrics() {
            Ok(body) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts are valid"),
            Err(err) => {
                warn!("serving /metrics: {err:#}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n"))
            }
        },
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/") => text(StatusCode::OK, "rstwatch: see /metrics\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
