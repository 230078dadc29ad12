//! Bearer-token authentication. Whoever can use the API can run a root
//! container with the host's `/` mounted, so every request needs the
//! token, except the health probes and `/version` (kubectl's dispatcher
//! asks it first, and it says nothing secret).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

const OPEN_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Without a token, only a client on this machine that is not a web page
/// gets in: a browser sends `Origin` on cross-site requests, and a page
/// using DNS rebinding sends its own name as `Host`.
fn browser_guard(req: &Request) -> Result<(), ApiError> {
    if req.headers().contains_key(header::ORIGIN) {
        return Err(ApiError::Forbidden("requests from web pages are refused (this server runs without a token)".into()));
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    // Loopback by address, not by prefix: `127.attacker.example` is a
    // name a rebinding page controls.
    let loopback = name.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    if !matches!(name, "localhost" | "") && !loopback {
        return Err(ApiError::Forbidden(format!("Host {host:?} is not this machine (this server runs without a token)")));
    }
    Ok(())
}

pub async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = app.config.token.as_deref() else {
        return match browser_guard(&req) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    };
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::Unauthorized("the bearer token is not valid".into()).into_response(),
        None => ApiError::Unauthorized(
            "a bearer token is required: `steward kubeconfig` on the server's machine prints a kubeconfig that carries it".into(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    fn req(headers: &[(&str, &str)]) -> axum::extract::Request {
        let mut b = axum::http::Request::builder().uri("/apis");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn without_a_token_only_local_non_browser_clients_pass() {
        assert!(super::browser_guard(&req(&[("host", "127.0.0.1:7420")])).is_ok());
        assert!(super::browser_guard(&req(&[("host", "localhost:7420")])).is_ok());
        assert!(super::browser_guard(&req(&[("host", "[::1]:7420")])).is_ok());
        assert!(super::browser_guard(&req(&[("host", "evil.example:7420")])).is_err());
        assert!(super::browser_guard(&req(&[("host", "127.0.0.1:7420"), ("origin", "https://evil.example")])).is_err());
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
    }
}
