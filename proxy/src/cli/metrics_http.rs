//! `/metrics` and `/healthz` for `doze serve --routes`, on hyper alone: the proxy-only build
//! has no admin API (and links no web framework).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.uri().path(), &handle);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(path: &str, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "application/json", r#"{"status": "ok"}"#.to_owned()),
        "/metrics" => {
            doze_proxy::metrics::collect_process();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                handle.render(),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error": {"code": "not_found", "message": "doze serves only /metrics and /healthz with --routes"}}"#
                .to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}
