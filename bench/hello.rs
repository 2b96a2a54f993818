//! The ceiling for `GET /v1/leader`: the same server stack as leasehold's
//! API (tokio current-thread runtime, hyper 1 http1) answering every request
//! at once with a fixed JSON body of the same size, and doing nothing else.

use std::convert::Infallible;
use std::process::ExitCode;

use clap::Args;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

#[derive(Args, Debug)]
pub struct HelloArgs {
    #[arg(long)]
    listen: String,
}

const BODY: &str = r#"{"is_leader":false,"node_id":"n1","leader_id":"n2","leader_address":"127.0.0.1:40000","fencing_token":7,"term":7,"lease_remaining_ms":0,"lease_deadline_boottime_ns":null,"backend":"raft"}"#;

pub fn run(a: &HelloArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hello: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&a.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hello: {}: {e}", a.listen);
                return ExitCode::from(1);
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let mut r = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("header"));
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
