//! The small HTTP layer under the local API, the metrics listener and the
//! clients: the capped accept loop, the kubelet probes, and a blocking
//! HTTP/1.1 client for loopback use.
//!
//! Owns: how a connection is admitted and served (a cap, a header timeout),
//! what `/healthz` and `/readyz` mean, and how a client request is bounded
//! in time and size. Must not: know any endpoint beyond the probes.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::LeaderView;

/// How long request headers may take to arrive (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A cap on connections served at once: a connection over the cap is
/// closed as soon as it is accepted.
#[derive(Clone)]
pub struct ConnectionLimit(Arc<Semaphore>);

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit(Arc::new(Semaphore::new(max)))
    }

    /// A permit held for as long as the connection is served, or None.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Serves HTTP/1.1 on `listener` until the task is dropped: at most `max`
/// connections at once (`refused` is called for each one closed over the
/// cap), each request answered by `handle`.
pub async fn serve<H, F, B>(listener: TcpListener, max: usize, refused: impl Fn(), handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = ConnectionLimit::new(max);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(permit) = limit.admit() else {
            refused();
            drop(stream);
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let mut builder = http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The kubelet probes, served on both listeners: `/healthz` answers while
/// the process serves; `/readyz` while this node knows a leader. None for
/// any other path.
pub fn probe(path: &str, view: &LeaderView) -> Option<(StatusCode, &'static str)> {
    match path {
        "/healthz" => Some((StatusCode::OK, "ok\n")),
        "/readyz" if view.leader_id.is_some() => Some((StatusCode::OK, "ok\n")),
        "/readyz" => Some((StatusCode::SERVICE_UNAVAILABLE, "no leader known\n")),
        _ => None,
    }
}

/// A request's outcome: HTTP status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The most of an answer that is read.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// One request over a fresh connection to `api` (`HOST:PORT` or
/// `http://HOST:PORT`), which gives up after `limit` in all, however slowly
/// the other side trickles bytes. `headers` are extra header lines
/// (`Name: value`); a body is sent as JSON.
pub fn request(
    api: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
    limit: Duration,
) -> Result<Answer, String> {
    let deadline = std::time::Instant::now() + limit;
    let auth = authority(api)?;
    let with_port = if auth.contains(':') { auth.to_string() } else { format!("{auth}:80") };
    let addr = with_port
        .as_str()
        .to_socket_addrs()
        .map_err(|e| format!("--api {api}: {e}"))?
        .next()
        .ok_or_else(|| format!("--api {api}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, limit.min(Duration::from_secs(2)))
        .map_err(|e| format!("cannot reach {api}: {e}"))?;
    let _ = s.set_nodelay(true);
    let has_host = headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:"));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has_host {
        let host = if addr.ip().is_loopback() { "127.0.0.1".to_string() } else { auth.to_string() };
        head.push_str(&format!("Host: {host}\r\n"));
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Connection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(head.as_bytes()).map_err(|e| format!("{api}: {e}"))?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || bytes.len() as u64 >= MAX_ANSWER_BYTES {
            return Err(format!("{api}: no complete answer within {limit:?}"));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{api}: {e}")),
        }
    }
    parse_answer(&bytes).ok_or_else(|| format!("{api}: not an HTTP answer"))
}

/// One GET with a short limit; None if nothing answered in time.
pub fn get(api: &str, path: &str, limit: Duration) -> Option<(u16, String)> {
    request(api, "GET", path, &[], "", limit).ok().map(|a| (a.status, a.body))
}

/// `http://HOST:PORT` (or `HOST:PORT`) to `HOST:PORT`.
pub fn authority(api: &str) -> Result<&str, String> {
    let rest = api.strip_prefix("http://").unwrap_or(api);
    if rest.starts_with("https://") {
        return Err(format!("--api {api}: https is not supported for the local API"));
    }
    let auth = rest.split('/').next().unwrap_or("");
    if auth.is_empty() {
        return Err(format!("--api {api}: expected http://HOST:PORT"));
    }
    Ok(auth)
}

/// Status and body of a whole HTTP/1.1 answer (with a chunked body joined).
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let status = text.get(9..12)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Some(Answer { status, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_parse_and_https_is_refused() {
        assert_eq!(authority("http://127.0.0.1:8080"), Ok("127.0.0.1:8080"));
        assert_eq!(authority("127.0.0.1:8080/"), Ok("127.0.0.1:8080"));
        assert!(authority("https://127.0.0.1:8080").is_err());
        assert!(authority("http://").is_err());
    }

    #[test]
    fn answers_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n";
        assert_eq!(parse_answer(plain), Some(Answer { status: 503, body: "no\n".into() }));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked), Some(Answer { status: 200, body: "abcde".into() }));
        assert_eq!(parse_answer(b"garbage"), None);
    }
}
