//! The fencing store: a tiny HTTP key-value store that accepts a write only
//! with a fencing token at least the highest it has accepted for that key,
//! the way a database guarded by leasehold's tokens would. Every attempt is
//! logged, in the order the store decided it, for the fencing checks.
//!
//! `PUT /k/KEY?token=T&node=I` answers 200 (accepted) or 409 (stale).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Attempt {
    pub key: String,
    pub token: u64,
    pub node: usize,
    pub accepted: bool,
}

#[derive(Default)]
struct State {
    highest: BTreeMap<String, u64>,
    log: Vec<Attempt>,
}

pub struct Store {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Store {
    /// Starts the store on a loopback port. `fenced: false` accepts every
    /// write (the negative control of the fencing checks).
    pub fn start(fenced: bool) -> std::io::Result<Store> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let store = Store { addr: listener.local_addr()?, state: Arc::default(), stop: Arc::default() };
        let (state, stop) = (store.state.clone(), store.stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let state = state.clone();
                        thread::spawn(move || serve(s, &state, fenced));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(store)
    }

    pub fn log(&self) -> Vec<Attempt> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).log.clone()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(s: TcpStream, state: &Mutex<State>, fenced: bool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(mut out) = s.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The headers carry nothing the store needs; read them to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let code = match parse(&line) {
        Some((key, token, node)) => {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let top = st.highest.get(&key).copied().unwrap_or(0);
            let accepted = !fenced || token >= top;
            if accepted {
                st.highest.insert(key.clone(), top.max(token));
            }
            st.log.push(Attempt { key, token, node, accepted });
            if accepted {
                "200 OK"
            } else {
                "409 Conflict"
            }
        }
        None => "400 Bad Request",
    };
    let _ = write!(out, "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// `PUT /k/KEY?token=T&node=I HTTP/1.1` to (KEY, T, I).
fn parse(line: &str) -> Option<(String, u64, usize)> {
    let target = line.strip_prefix("PUT /k/")?.split(' ').next()?;
    let (key, query) = target.split_once('?')?;
    let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    Some((key.to_string(), param("token")?.parse().ok()?, param("node")?.parse().ok()?))
}

/// The fencing checks over a store's log.
#[derive(Debug, Default)]
pub struct Fencing {
    pub accepted: usize,
    pub stale_rejected: usize,
    /// Accepted writes whose token is below an earlier accepted one.
    pub out_of_order: Vec<String>,
    /// Tokens written by more than one node: one leadership per token.
    pub shared_tokens: Vec<String>,
}

pub fn check(log: &[Attempt]) -> Fencing {
    let mut f = Fencing::default();
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    let mut owner: BTreeMap<u64, usize> = BTreeMap::new();
    for a in log {
        match owner.get(&a.token) {
            Some(&n) if n != a.node => {
                f.shared_tokens.push(format!("token {} used by node {} and node {}", a.token, n, a.node))
            }
            Some(_) => {}
            None => {
                owner.insert(a.token, a.node);
            }
        }
        if !a.accepted {
            f.stale_rejected += 1;
            continue;
        }
        f.accepted += 1;
        let top = highest.entry(&a.key).or_insert(0);
        if a.token < *top {
            f.out_of_order.push(format!("key {}: token {} accepted after {}", a.key, a.token, top));
        }
        *top = (*top).max(a.token);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(token: u64, node: usize, accepted: bool) -> Attempt {
        Attempt { key: "k".into(), token, node, accepted }
    }

    #[test]
    fn the_checks_find_out_of_order_writes_and_shared_tokens() {
        let ok = check(&[a(1, 0, true), a(2, 1, true), a(1, 0, false), a(2, 1, true)]);
        assert_eq!((ok.accepted, ok.stale_rejected), (3, 1));
        assert!(ok.out_of_order.is_empty() && ok.shared_tokens.is_empty());
        assert_eq!(check(&[a(2, 1, true), a(1, 0, true)]).out_of_order.len(), 1);
        assert_eq!(check(&[a(2, 1, true), a(2, 0, false)]).shared_tokens.len(), 1);
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse("PUT /k/x?token=7&node=2 HTTP/1.1\r\n"), Some(("x".into(), 7, 2)));
        assert_eq!(parse("GET /k/x?token=7&node=2 HTTP/1.1\r\n"), None);
        assert_eq!(parse("PUT /k/x?token=-1&node=2 HTTP/1.1\r\n"), None);
    }
}
