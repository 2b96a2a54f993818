//! The check-then-write loops of docs/api.md (examples/clients: Python, Go,
//! Java, Rust), each run against a live group of three sidecars through a
//! planned hand-over and a paused sidecar. A loop must write only with the
//! token its node holds, stop at once when the lease is handed over (it
//! follows /v1/watch), stop by the lease's deadline when its sidecar is
//! frozen (no event comes then), and go on with the higher token when its
//! node leads again. Two broken variants of the Python loop show that these
//! checks catch a loop that asks once, and one that ignores the deadline.
//! Every process is ended by its pid; every wait has a deadline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::group::Group;

const TTL: Duration = Duration::from_secs(1);
/// One group at a time: the checks count in hundreds of milliseconds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Writes each loop makes: at 20 ms apiece, a few seconds of writing.
const COUNT: usize = 200;
/// How late a written line may reach the test after the loop had to stop.
const SLACK: Duration = Duration::from_millis(300);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loop under test, its stdout read line by line with the instant each
/// line arrived.
struct Loop {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, u64, usize)>,
}

impl Loop {
    fn start(mut cmd: Command) -> Loop {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn the loop");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Loop { child, lines, seen: Vec::new() }
    }

    /// Reads what arrived until `until`.
    fn read_until(&mut self, until: Instant) -> Result<(), String> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok((at, line)) => {
                    let mut words = line.split_whitespace().map(str::parse::<u64>);
                    match (words.next(), words.next(), words.next()) {
                        (Some(Ok(token)), Some(Ok(record)), None) => self.seen.push((at, token, record as usize)),
                        _ => return Err(format!("the loop printed {line:?}, not \"TOKEN RECORD\"")),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= until => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(left.min(Duration::from_millis(20)));
                    if Instant::now() >= until {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits (at most 15 s) until `n` writes with `token` arrived.
    fn wait_writes(&mut self, token: u64, n: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.seen.iter().filter(|w| w.1 == token).count() < n {
            if Instant::now() >= deadline {
                return Err(format!("fewer than {n} writes with token {token} within 15 s: {:?}", self.tokens()));
            }
            self.read_until(Instant::now() + Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Fails if a write arrived after `from` (up to now).
    fn quiet_since(&self, from: Instant, what: &str) -> Result<(), String> {
        match self.seen.iter().find(|w| w.0 > from) {
            Some(w) => Err(format!("wrote record {} with token {} {what}", w.2, w.1)),
            None => Ok(()),
        }
    }

    fn tokens(&self) -> Vec<u64> {
        let mut t: Vec<u64> = self.seen.iter().map(|w| w.1).collect();
        t.dedup();
        t
    }

    /// Waits (at most `within`) for the loop to exit; its success.
    fn finish(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                self.read_until(Instant::now() + Duration::from_millis(100))?;
                return if status.success() { Ok(()) } else { Err(format!("the loop exited with {status}")) };
            }
            if Instant::now() >= deadline {
                return Err(format!("the loop did not finish within {within:?}"));
            }
            self.read_until(Instant::now() + Duration::from_millis(50))?;
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drives one loop pointed at node n1's API through the faults and checks
/// what it wrote; `Err` says what it did wrong.
fn drive(g: &mut Group, cmd: Command) -> Result<Vec<u64>, String> {
    let t1 = g.make_leader(0, None);
    let mut l = Loop::start(cmd);
    l.wait_writes(t1, 20)?;

    // A planned hand-over ends the lease before its deadline: the watch
    // event must stop the loop at once.
    let t_to_n2 = g.make_leader(1, None);
    let handed = g.handed_over_at.take().ok_or("n1 handed over without a transfer")?;
    l.read_until(handed + SLACK + Duration::from_millis(700))?;
    l.quiet_since(handed + SLACK, &format!("after n1 handed its lease to n2 (token {t_to_n2})"))?;

    let t2 = g.make_leader(0, None);
    l.wait_writes(t2, 20)?;

    // A frozen sidecar sends no event: the deadline must stop the loop.
    let frozen = Instant::now();
    g.signal(0, libc::SIGSTOP);
    let (next, t3) = g.leader(Duration::from_secs(10), Some(0));
    let stopped = l.read_until(Instant::now().max(frozen + TTL + SLACK) + Duration::from_millis(300)).and_then(|_| {
        l.quiet_since(frozen + TTL + SLACK, &format!("after n1's lease ended (n1 frozen; n{} leads)", next + 1))
    });
    g.signal(0, libc::SIGCONT);
    stopped?;
    // n1 comes back as a follower: still no write.
    let woke = Instant::now();
    l.read_until(woke + Duration::from_millis(700))?;
    l.quiet_since(frozen + TTL + SLACK, &format!("while n{} led with token {t3}", next + 1))?;

    let t4 = g.make_leader(0, None);
    l.finish(Duration::from_secs(30))?;
    let records: Vec<usize> = l.seen.iter().map(|w| w.2).collect();
    if records != (0..COUNT).collect::<Vec<_>>() {
        return Err(format!("records out of order or missing: {} written", records.len()));
    }
    let tokens = l.tokens();
    if tokens != [t1, t2, t4] {
        return Err(format!("wrote with tokens {tokens:?}, not n1's {:?}", [t1, t2, t4]));
    }
    Ok(tokens)
}

fn api_url(g: &Group) -> String {
    format!("http://{}", g.apis[0])
}

fn python(script: &Path, g: &Group) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(api_url(g)).arg(COUNT.to_string());
    cmd
}

/// The Go loop, built in GOPATH mode against Debian's golang.org/x/sys.
fn go(g: &Group, work: &Path) -> Command {
    let bin = work.join("check-then-write-go");
    let built = Command::new("timeout")
        .args(["--signal=KILL", "600", "go", "build", "-o"])
        .arg(&bin)
        .arg(repo().join("examples/clients/check_then_write.go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", std::env::temp_dir().join("leasehold-go-cache"))
        .status()
        .expect("timeout (coreutils)");
    assert!(
        built.success(),
        "go build of examples/clients/check_then_write.go failed (scripts/api-tools.sh installs Go)"
    );
    let mut cmd = Command::new(bin);
    cmd.arg(api_url(g)).arg(COUNT.to_string());
    cmd
}

/// The Java loop, compiled against Debian's Jackson.
fn java(g: &Group, work: &Path) -> Command {
    let jars = ["jackson-databind", "jackson-core", "jackson-annotations"].map(|j| format!("/usr/share/java/{j}.jar"));
    let classpath = jars.join(":");
    let built = Command::new("timeout")
        .args(["--signal=KILL", "600", "javac", "-Xlint:all", "-Werror", "-d"])
        .arg(work)
        .args(["-cp", &classpath])
        .arg(repo().join("examples/clients/CheckThenWrite.java"))
        .status()
        .expect("timeout (coreutils)");
    assert!(
        built.success(),
        "javac of examples/clients/CheckThenWrite.java failed (scripts/api-tools.sh installs a JDK)"
    );
    let mut cmd = Command::new("java");
    cmd.args(["-cp", &format!("{}:{classpath}", work.display()), "CheckThenWrite"]);
    cmd.arg(api_url(g)).arg(COUNT.to_string());
    cmd
}

/// The Rust loop: the `check-then-write` example, built if this test runs
/// without the others.
fn rust(g: &Group) -> Command {
    let exe = std::env::current_exe().expect("test path");
    let examples = exe.parent().and_then(Path::parent).expect("target dir").join("examples");
    let bin = examples.join("check-then-write");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&bin) < modified(&repo().join("examples/clients/check_then_write.rs")) {
        let built = Command::new("timeout")
            .args(["--signal=KILL", "900", env!("CARGO"), "build", "--locked", "--example", "check-then-write"])
            .current_dir(repo())
            .status()
            .expect("cargo");
        assert!(built.success(), "cargo build --example check-then-write failed");
    }
    let mut cmd = Command::new(bin);
    cmd.arg(api_url(g)).arg(COUNT.to_string());
    cmd
}

#[test]
fn the_check_then_write_loops_of_the_docs_keep_to_the_lease() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start("api-clients", 3, TTL, |_, a| a);
    let work = g.dir.join("build");
    std::fs::create_dir_all(&work).expect("build dir");
    let loops: [(&str, Command); 4] = [
        ("python", python(&repo().join("examples/clients/check_then_write.py"), &g)),
        ("go", go(&g, &work)),
        ("java", java(&g, &work)),
        ("rust", rust(&g)),
    ];
    for (name, cmd) in loops {
        let started = Instant::now();
        match drive(&mut g, cmd) {
            Ok(tokens) => eprintln!("{name}: {COUNT} writes with tokens {tokens:?} in {:?}", started.elapsed()),
            Err(e) => panic!("the {name} loop: {e}\n{}", g.describe()),
        }
    }
    g.check();
}

/// The checks above catch a loop that asks once and writes on, and one
/// that follows the watch but ignores the deadline: both are the Python
/// loop with one line changed.
#[test]
fn a_loop_that_asks_once_or_ignores_the_deadline_is_caught() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start("api-clients-controls", 3, TTL, |_, a| a);
    let source = std::fs::read_to_string(repo().join("examples/clients/check_then_write.py")).expect("python loop");
    let broken = |edits: &[(&str, &str)], name: &str| {
        let mut text = source.clone();
        for (from, to) in edits {
            assert!(text.contains(from), "the Python loop no longer has {from:?}: update this control");
            text = text.replace(from, to);
        }
        let path = g.dir.join(name);
        std::fs::write(&path, text).expect("write the broken loop");
        path
    };
    let within_deadline = "if time.clock_gettime_ns(time.CLOCK_BOOTTIME) < self.deadline:";
    // Asks once and keeps the token: no deadline, no watch.
    let asks_once = broken(
        &[
            (within_deadline, "if self.token is not None:"),
            ("    threading.Thread(target=follow, args=(lease,), daemon=True).start()\n", ""),
        ],
        "asks_once.py",
    );
    // Follows the watch, ignores the deadline.
    let no_deadline = broken(&[(within_deadline, "if self.deadline > 0:")], "no_deadline.py");

    let cmd = python(&asks_once, &g);
    let err = drive(&mut g, cmd).expect_err("a loop that asks once passed");
    assert!(err.contains("after n1 handed its lease to n2"), "caught, but not at the hand-over: {err}");
    let cmd = python(&no_deadline, &g);
    let err = drive(&mut g, cmd).expect_err("a loop that ignores the deadline passed");
    assert!(err.contains("after n1's lease ended (n1 frozen"), "caught, but not at the freeze: {err}");
    g.check();
}

/// docs/api.md shows each loop as it is tested, whole.
#[test]
fn the_docs_show_the_loops_that_are_tested() {
    let docs = std::fs::read_to_string(repo().join("docs/api.md")).expect("docs/api.md");
    for (file, lang) in [
        ("check_then_write.py", "python"),
        ("check_then_write.go", "go"),
        ("CheckThenWrite.java", "java"),
        ("check_then_write.rs", "rust"),
    ] {
        let code = std::fs::read_to_string(repo().join("examples/clients").join(file)).expect("loop");
        let block = format!("```{lang}\n{code}```\n");
        assert!(docs.contains(&block), "docs/api.md does not show examples/clients/{file} whole in a ```{lang} block");
    }
}
