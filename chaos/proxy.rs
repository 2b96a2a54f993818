//! A fault-injecting TCP proxy for one directed peer link: node i dials node
//! j through it. A peer connection carries the dialer's messages only (after
//! a hello each way), so a link's faults hit exactly what i sends to j, and
//! a one-way partition is one blackholed link.
//!
//! It forwards whole frames (4-byte big-endian length, payload), so it can
//! lose, duplicate, delay or reorder messages and cut a connection in the
//! middle of a frame. It never alters a frame's bytes: a peer link with
//! integrity checks (TCP's, TLS's) does not deliver altered messages, and a
//! forged message is the fuzz targets' and the security tests' business.
//! It listens on a loopback port and dials only the node it fronts.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use leasehold::core::rng::SplitMix64;

/// What a link does to the frames it carries. The default passes all.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Discard every message, both ways, keeping the connection open: a
    /// firewall that drops packets. On an opaque (TLS) link the bytes are
    /// held until the heal instead, as TCP would retransmit them.
    pub blackhole: bool,
    /// Deliver each frame this much later, plus up to `jitter`, in order.
    pub delay: Duration,
    pub jitter: Duration,
    /// Probabilities per frame (the hello is spared, so that the fault
    /// hits messages rather than the handshake).
    pub drop: f64,
    pub duplicate: f64,
    /// Hold a frame back and deliver it after the next one.
    pub reorder: f64,
    /// Deliver half a frame, then close both ends.
    pub cut: f64,
}

impl Faults {
    /// A short description for the harness's journal.
    pub fn describe(&self) -> String {
        if self.blackhole {
            return "blackhole".into();
        }
        format!(
            "delay {:?}+{:?} drop {} dup {} reorder {} cut {}",
            self.delay, self.jitter, self.drop, self.duplicate, self.reorder, self.cut
        )
    }
}

#[derive(Default)]
pub struct Counters {
    pub frames: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub cut: AtomicU64,
}

pub struct Link {
    pub addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    pub counters: Arc<Counters>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

/// A frame announced larger than this is not a leasehold frame: the rest
/// of the connection is passed through unparsed.
const MAX_PARSED_FRAME: usize = 1 << 20;

impl Link {
    /// Listens on a free loopback port and forwards to `target`. `opaque`:
    /// the bytes are encrypted (peer TLS), so they pass as they come, and
    /// only the blackhole, the delay and the cuts apply.
    pub fn start(target: SocketAddr, seed: u64, opaque: bool) -> io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let link = Link {
            addr: listener.local_addr()?,
            faults: Arc::default(),
            counters: Arc::default(),
            streams: Arc::default(),
            stop: Arc::default(),
        };
        let (faults, counters, streams, stop) =
            (link.faults.clone(), link.counters.clone(), link.streams.clone(), link.stop.clone());
        thread::spawn(move || {
            let mut rng = SplitMix64::new(seed);
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let conn =
                            Conn { faults: faults.clone(), counters: counters.clone(), seed: rng.next_u64(), opaque };
                        if let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                            let _ = client.set_nonblocking(false);
                            let mut open = streams.lock().unwrap_or_else(|e| e.into_inner());
                            open.retain(|s: &TcpStream| s.peer_addr().is_ok());
                            for s in [&client, &server] {
                                if let Ok(s) = s.try_clone() {
                                    open.push(s);
                                }
                            }
                            conn.run(client, server);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(link)
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Closes every connection open through the link (peers redial).
    pub fn reset(&self) {
        for s in self.streams.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.reset();
    }
}

struct Conn {
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
    seed: u64,
    opaque: bool,
}

impl Conn {
    fn run(self, client: TcpStream, server: TcpStream) {
        let (Ok(client_w), Ok(server_r)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let faults = self.faults.clone();
        let opaque = self.opaque;
        // Back from the node: its hello (and TLS records). Blackholed with
        // the link.
        thread::spawn(move || copy_back(server_r, client_w, &faults, opaque));
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>, bool)>();
        let writer_server = server;
        let held = self.opaque.then(|| self.faults.clone());
        thread::spawn(move || deliver(rx, writer_server, held));
        thread::spawn(move || self.forward(client, tx));
    }

    /// Reads whole frames from the dialer and schedules their delivery.
    fn forward(self, mut client: TcpStream, tx: mpsc::Sender<(Instant, Vec<u8>, bool)>) {
        if self.opaque {
            return self.forward_opaque(client, tx);
        }
        let mut rng = SplitMix64::new(self.seed);
        let mut first = true;
        let mut held: Option<Vec<u8>> = None;
        let mut last_due = Instant::now();
        loop {
            let mut len = [0u8; 4];
            if client.read_exact(&mut len).is_err() {
                break;
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > MAX_PARSED_FRAME {
                let _ = tx.send((Instant::now(), len.to_vec(), false));
                let mut rest = Vec::new();
                let _ = client.read_to_end(&mut rest);
                let _ = tx.send((Instant::now(), rest, false));
                break;
            }
            let mut frame = len.to_vec();
            frame.resize(4 + n, 0);
            if client.read_exact(&mut frame[4..]).is_err() {
                break;
            }
            if first {
                // The connection's hello is held, not dropped, while the link
                // is blackholed (as TCP would retransmit it): a connection
                // whose hello is lost would stay open and silent after the
                // heal. It is dialled by a node restarted behind a partition.
                wait_out_blackhole(&self.faults);
            }
            let f = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
            self.counters.frames.fetch_add(1, Ordering::Relaxed);
            if f.blackhole {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let jitter = Duration::from_nanos(rng.below(f.jitter.as_nanos() as u64 + 1));
            let due = (Instant::now() + f.delay + jitter).max(last_due);
            last_due = due;
            let spared = std::mem::take(&mut first);
            if !spared && rng.chance(f.drop) {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !spared && rng.chance(f.cut) {
                self.counters.cut.fetch_add(1, Ordering::Relaxed);
                frame.truncate(4 + n / 2);
                let _ = tx.send((due, frame, true));
                break;
            }
            if !spared && held.is_none() && rng.chance(f.reorder) {
                self.counters.reordered.fetch_add(1, Ordering::Relaxed);
                held = Some(frame);
                continue;
            }
            let copies = if !spared && rng.chance(f.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                if tx.send((due, frame.clone(), false)).is_err() {
                    return;
                }
            }
            if copies == 2 {
                self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(h) = held.take() {
                if tx.send((due, h, false)).is_err() {
                    return;
                }
            }
        }
        if held.is_some() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let _ = client.shutdown(Shutdown::Both);
    }
}

impl Conn {
    /// Bytes that cannot be parsed (TLS records) pass in the order read,
    /// blackholed, delayed or cut as a whole chunk.
    fn forward_opaque(self, mut client: TcpStream, tx: mpsc::Sender<(Instant, Vec<u8>, bool)>) {
        let mut rng = SplitMix64::new(self.seed);
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let f = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
            self.counters.frames.fetch_add(1, Ordering::Relaxed);
            // Blackholed bytes are not lost but held until the heal (by
            // `deliver`), as TCP retransmits them: dropping part of a TLS
            // stream would only corrupt it.
            let jitter = Duration::from_nanos(rng.below(f.jitter.as_nanos() as u64 + 1));
            let due = (Instant::now() + f.delay + jitter).max(last_due);
            last_due = due;
            let cut = rng.chance(f.cut);
            if cut {
                self.counters.cut.fetch_add(1, Ordering::Relaxed);
            }
            if tx.send((due, buf[..n].to_vec(), cut)).is_err() || cut {
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Both);
    }
}

/// Writes frames to the node when they are due; a cut closes both ends.
/// With `held` (an opaque link), bytes wait while the link is blackholed.
fn deliver(rx: mpsc::Receiver<(Instant, Vec<u8>, bool)>, mut server: TcpStream, held: Option<Arc<Mutex<Faults>>>) {
    while let Ok((due, bytes, cut)) = rx.recv() {
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
        if let Some(faults) = &held {
            wait_out_blackhole(faults);
        }
        if server.write_all(&bytes).is_err() || cut {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

/// Waits (at most a minute) while the link is blackholed.
fn wait_out_blackhole(faults: &Mutex<Faults>) {
    let limit = Instant::now() + Duration::from_secs(60);
    while faults.lock().unwrap_or_else(|e| e.into_inner()).blackhole && Instant::now() < limit {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes back from the node; blackholed ones are dropped, or held on an
/// opaque link.
fn copy_back(mut from: TcpStream, mut to: TcpStream, faults: &Mutex<Faults>, opaque: bool) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if opaque {
            wait_out_blackhole(faults);
        } else if faults.lock().unwrap_or_else(|e| e.into_inner()).blackhole {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
