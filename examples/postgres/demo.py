#!/usr/bin/env python3
"""Three PostgreSQL instances on loopback, one streaming primary and two
synchronous standbys, each with a leasehold sidecar that elects the most
up-to-date one, promotes it and fences the others.

    demo.py up     [--dir DIR] [--leasehold BIN]   build, start, print how to use it
    demo.py down   [--dir DIR]                     stop what `up` started (by pid)
    demo.py faults [--dir DIR] [--leasehold BIN] [--ports P,P,...] [--rounds N]
                   the fault suite: kill -9, SIGSTOP, SIGTERM, a held-back
                   standby; after each, one instance takes writes, no
                   acknowledged write is lost, tokens never go back

Needs PostgreSQL 15 or newer (Debian's `postgresql`), psql and, for the
writer, psycopg 3. Run as root, PostgreSQL runs as the `postgres` user.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import writer  # noqa: E402

NAMES = ["a", "b", "c"]
LEASE = "2s"


def pg_bin():
    for v in ("17", "16", "15"):
        d = "/usr/lib/postgresql/%s/bin" % v
        if os.path.exists(os.path.join(d, "postgres")):
            return d
    sys.exit("PostgreSQL 15 or newer not found under /usr/lib/postgresql (apt-get install postgresql)")


class Node:
    def __init__(self, name, dir, pg_port, peer_port, api_port, metrics_port):
        self.name = name
        self.dir = dir
        self.pg_port = pg_port
        self.peer = "127.0.0.1:%d" % peer_port
        self.api = "127.0.0.1:%d" % api_port
        self.metrics = "127.0.0.1:%d" % metrics_port
        self.data = os.path.join(dir, name, "data")
        self.sidecar = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.pg_port


class Cluster:
    def __init__(self, dir, leasehold, ports):
        self.dir = os.path.abspath(dir)
        self.leasehold = leasehold
        self.bin = pg_bin()
        self.user = "postgres" if os.geteuid() == 0 else ""
        self.nodes = [Node(n, self.dir, *ports[4 * i:4 * i + 4]) for i, n in enumerate(NAMES)]

    # --- PostgreSQL -------------------------------------------------------
    def env(self, n):
        return dict(
            os.environ,
            PGNODE_NAME=n.name, PGNODE_PORT=str(n.pg_port), PGNODE_DATA=n.data, PGNODE_BIN=self.bin,
            PGNODE_USER=self.user, PGNODE_PEERS=",".join(m.name for m in self.nodes if m is not n),
        )

    def owner(self, argv):
        return (["runuser", "-u", self.user, "--"] + argv) if self.user else argv

    def pgnode(self, n, *args, check=True):
        out = subprocess.run([sys.executable, os.path.join(HERE, "pgnode.py")] + list(args),
                             env=self.env(n), capture_output=True, text=True, timeout=180)
        if check and out.returncode != 0:
            raise RuntimeError("pgnode %s %s: %s" % (n.name, args, out.stderr.strip()))
        return out

    def sql(self, n, query, timeout=5, options=""):
        argv = [os.path.join(self.bin, "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(n.pg_port),
                "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", query]
        env = dict(os.environ, PGCONNECT_TIMEOUT="2",
                   PGOPTIONS="-c statement_timeout=%d %s" % (timeout * 1000, options))
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 3, env=env)

    def build(self):
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        for n in self.nodes:
            os.makedirs(os.path.join(self.dir, n.name))
        if self.user:
            subprocess.run(["chown", "-R", self.user, self.dir], check=True)
            os.chmod(self.dir, 0o755)
        a = self.nodes[0]
        run(self.owner([os.path.join(self.bin, "initdb"), "-D", a.data, "-U", "postgres", "--auth=trust"]))
        with open(os.path.join(a.data, "postgresql.conf"), "a") as f:
            f.write("""
# leasehold example (examples/postgres/README.md)
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
wal_level = replica
wal_log_hints = on              # pg_rewind, when an old primary rejoins
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '512MB'
hot_standby = on
synchronous_commit = remote_apply   # a standby confirms what it applied: what it reports
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 200ms
default_transaction_read_only = on  # every instance is fenced until elected
""" % self.dir)
        self.pg_ctl(a, "start", "-o", "-p %d" % a.pg_port)
        self.sql_ok(a, "CREATE TABLE leasehold_branch (token bigint PRIMARY KEY, at timestamptz DEFAULT now())",
                    read_write=True)
        self.sql_ok(a, "CREATE TABLE writes (id bigint PRIMARY KEY, token bigint NOT NULL, "
                       "at timestamptz DEFAULT now())", read_write=True)
        for n in self.nodes[1:]:
            self.sql_ok(a, "SELECT pg_create_physical_replication_slot('%s')" % n.name)
            run(self.owner([os.path.join(self.bin, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(a.pg_port),
                            "-U", "postgres", "-D", n.data, "-X", "stream"]))
            with open(os.path.join(n.data, "postgresql.conf"), "a") as f:
                f.write("port = %d\n" % n.pg_port)
        with open(os.path.join(a.data, "postgresql.conf"), "a") as f:
            f.write("port = %d\n" % a.pg_port)
        # The standbys start fenced (standbys of a, read-only), and a is
        # fenced as a primary that holds no lease; they catch up with all
        # of a's history before the sidecars start and decide who leads.
        for n in self.nodes[1:]:
            self.pgnode(n, "start-fenced", a.address)
        self.sql_ok(a, "ALTER SYSTEM SET synchronous_standby_names = 'leasehold_fenced'")
        self.sql_ok(a, "SELECT pg_reload_conf()")
        end = self.sql_ok(a, "SELECT pg_current_wal_flush_lsn()")
        deadline = time.monotonic() + 60
        for n in self.nodes[1:]:
            while self.sql_ok(n, "SELECT pg_last_wal_replay_lsn() >= '%s'" % end) != "t":
                if time.monotonic() > deadline:
                    raise RuntimeError("%s did not replay a's history up to %s" % (n.name, end))
                time.sleep(0.05)

    def sql_ok(self, n, query, read_write=False):
        out = self.sql(n, query, options="-c default_transaction_read_only=off" if read_write else "")
        if out.returncode != 0:
            raise RuntimeError("%s: %s: %s" % (n.name, query, out.stderr.strip()))
        return out.stdout.strip()

    def pg_ctl(self, n, *args):
        log = os.path.join(self.dir, n.name, n.name + ".pg.log")
        run(self.owner([os.path.join(self.bin, "pg_ctl"), "-D", n.data, "-l", log, "-w", "-t", "60"] + list(args)))

    def postmaster_pid(self, n):
        try:
            with open(os.path.join(n.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    # --- sidecars -----------------------------------------------------------
    def peers_file(self):
        path = os.path.join(self.dir, "peers")
        with open(path, "w") as f:
            f.write("generation 1\n" + "".join("%s=%s\n" % (n.name, n.peer) for n in self.nodes))
        return path

    def start_sidecar(self, n):
        py = sys.executable
        node = os.path.join(HERE, "pgnode.py")
        argv = [
            self.leasehold, "run", "--node-id", n.name, "--cluster-id", "pg-example",
            "--peers-file", os.path.join(self.dir, "peers"),
            "--listen-peer", n.peer, "--listen-api", n.api, "--listen-metrics", n.metrics,
            "--data-dir", os.path.join(self.dir, n.name, "sidecar"), "--lease-ttl", LEASE,
            "--advertise", n.address,
            "--position-exec", "%s %s position" % (py, node),
            "--on-elected", "%s %s elected" % (py, node),
            "--on-demoted", "%s %s demoted" % (py, node),
            "--health-check-exec",
            "%s -h 127.0.0.1 -p %d -U postgres -d postgres -t 1 -q" % (os.path.join(self.bin, "pg_isready"), n.pg_port),
        ]
        log = open(os.path.join(self.dir, n.name + ".sidecar.log"), "a")
        n.sidecar = subprocess.Popen(argv, env=self.env(n), stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def start(self):
        self.peers_file()
        for n in self.nodes:
            self.start_sidecar(n)

    def leader(self):
        """The node whose sidecar answers 200 on /v1/leader, and its answer."""
        found = []
        for n in self.nodes:
            status, body = get(n.api, "/v1/leader")
            if status == 200:
                found.append((n, body))
        if len(found) > 1:
            raise AssertionError("two sidecars hold a lease: %s" % [f[0].name for f in found])
        return found[0] if found else (None, None)

    def wait_leader(self, within, not_=None):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            n, body = self.leader()
            if n is not None and n is not not_ and self.writable(n):
                return n, body
            time.sleep(0.05)
        raise AssertionError("no writable leader within %ss" % within)

    def writable(self, n, timeout=2):
        """A write on `n` is confirmed (by a synchronous standby)."""
        out = self.sql(n, "INSERT INTO writes (id, token) VALUES (-1, 0) ON CONFLICT (id) DO UPDATE SET at = now()",
                       timeout=timeout)
        return out.returncode == 0

    def stop(self):
        for n in self.nodes:
            if n.sidecar is not None and n.sidecar.poll() is None:
                n.sidecar.send_signal(signal.SIGINT)
        for n in self.nodes:
            if n.sidecar is not None:
                try:
                    n.sidecar.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    n.sidecar.kill()
                    n.sidecar.wait()
            if self.postmaster_pid(n):
                subprocess.run(self.owner([os.path.join(self.bin, "pg_ctl"), "-D", n.data, "stop", "-m",
                                           "immediate"]), capture_output=True, timeout=60)


def run(argv):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), (out.stdout + out.stderr).strip()[-2000:]))
    return out.stdout


def get(api, path, timeout=0.5):
    try:
        with urllib.request.urlopen("http://%s%s" % (api, path), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, ValueError):
        return None, None


def free_ports(k):
    ports, socks = [], []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# --- the fault suite -----------------------------------------------------------
class Suite:
    """Runs the writer on its own thread while faults are injected, and
    checks the data after each one."""

    def __init__(self, cluster):
        self.c = cluster
        self.w = writer.Writer([n.api for n in cluster.nodes])
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.write, daemon=True)
        self.results = []

    def write(self):
        while not self.halt.is_set():
            with self.lock:
                self.w.step()

    def log(self, msg):
        print("%7.2fs %s" % (time.monotonic() - self.t0, msg), flush=True)

    def run(self, rounds):
        self.t0 = time.monotonic()
        leader, _ = self.c.wait_leader(60)
        self.log("leader %s; writing" % leader.name)
        self.thread.start()
        self.wait_acks(20)
        faults = [self.kill, self.stop_sidecar, self.switchover, self.held_back]
        for r in range(rounds):
            for fault in faults:
                self.results.append(fault())
                self.check(fault.__name__)
        self.halt.set()
        self.thread.join(timeout=30)
        return self.results

    def wait_acks(self, k, within=30):
        start = len(self.w.acked)
        deadline = time.monotonic() + within
        while len(self.w.acked) < start + k:
            if time.monotonic() > deadline:
                raise AssertionError("fewer than %d writes acknowledged in %ss" % (k, within))
            time.sleep(0.02)

    def failover(self, name, old, action):
        """Injects `action` on the leader `old`; returns the write
        unavailability: the last write acknowledged before it to the first
        acknowledged under a new token."""
        # Each fault starts from a healthy group: both standbys stream.
        for n in self.c.nodes:
            if n is not old:
                self.wait_streaming(n)
        self.wait_acks(10)
        _, body = self.c.wait_leader(30)
        old_token = body["fencing_token"]
        self.log("%s on %s (token %d)" % (name, old.name, old_token))
        action()
        deadline = time.monotonic() + 60
        while True:
            firsts = dict(self.w.first_ack_after)
            newer = [t for t in firsts if t > old_token]
            if newer:
                first = firsts[min(newer)]
                break
            if time.monotonic() > deadline:
                raise AssertionError("%s: no write acknowledged under a new token within 60s" % name)
            time.sleep(0.01)
        new, _ = self.c.wait_leader(30)
        gap = first - self.w.last_ack_of[old_token]
        self.log("%s: %s -> %s, writes unavailable %.0f ms" % (name, old.name, new.name, gap * 1000))
        return {"fault": name, "from": old.name, "to": new.name, "unavailable_ms": round(gap * 1000)}

    def restart(self, n, kill_pg):
        """Brings `n` back: its PostgreSQL as a fenced standby if it was
        killed, its sidecar; waits until it streams from the leader again."""
        leader, _ = self.c.wait_leader(30)
        if kill_pg:
            self.c.pgnode(n, "start-fenced", leader.address)
        self.c.start_sidecar(n)
        self.wait_streaming(n)

    def kill_both(self, n):
        """kill -9 of `n`'s sidecar and of its postmaster."""
        pid = self.c.postmaster_pid(n)
        n.sidecar.kill()
        if pid:
            os.kill(pid, signal.SIGKILL)
        n.sidecar.wait()

    def kill(self):
        old, _ = self.c.wait_leader(30)
        r = self.failover("kill -9 of the primary's postgres and sidecar", old, lambda: self.kill_both(old))
        self.restart(old, kill_pg=True)
        return r

    def stop_sidecar(self):
        old, _ = self.c.wait_leader(30)
        def act():
            old.sidecar.send_signal(signal.SIGSTOP)
        r = self.failover("SIGSTOP of the primary's sidecar for 3 leases", old, act)
        time.sleep(max(0.0, 6.0 - r["unavailable_ms"] / 1000))
        old.sidecar.send_signal(signal.SIGCONT)
        self.wait_streaming(old)
        return r

    def switchover(self):
        old, _ = self.c.wait_leader(30)
        def act():
            old.sidecar.send_signal(signal.SIGTERM)
            old.sidecar.wait(timeout=30)
        r = self.failover("SIGTERM of the primary's sidecar (switchover)", old, act)
        self.restart(old, kill_pg=False)
        return r

    def held_back(self):
        old, _ = self.c.wait_leader(30)
        standbys = [n for n in self.c.nodes if n is not old]
        for n in standbys:
            self.wait_streaming(n)
        self.wait_acks(10)
        lagging = standbys[0]
        self.c.sql_ok(lagging, "SELECT pg_wal_replay_pause()")
        self.wait_acks(20)
        r = self.failover("kill -9 of the primary while a standby's replay is paused", old,
                          lambda: self.kill_both(old))
        if r["to"] == lagging.name:
            raise AssertionError("the standby whose replay was paused (%s) was elected" % lagging.name)
        self.c.sql_ok(lagging, "SELECT pg_wal_replay_resume()")
        self.restart(old, kill_pg=True)
        self.wait_streaming(lagging)
        r["held_back"] = lagging.name
        return r

    def wait_streaming(self, n, within=90):
        """Waits until `n` streams from the leader and answers queries,
        steadily for two seconds (a standby whose history forked streams
        for a moment before it stops)."""
        deadline = time.monotonic() + within
        steady_since = None
        while True:
            leader, _ = self.c.wait_leader(30)
            out = self.c.sql(leader, "SELECT count(*) FROM pg_stat_replication WHERE application_name = '%s' "
                                     "AND state = 'streaming' AND replay_lsn IS NOT NULL" % n.name)
            ok = out.returncode == 0 and out.stdout.strip() == "1" and self.c.sql(n, "SELECT 1").returncode == 0
            now = time.monotonic()
            if not ok:
                steady_since = None
            elif steady_since is None:
                steady_since = now
            elif now - steady_since >= 2:
                return
            if now > deadline:
                raise AssertionError("%s does not stream from %s within %ss" % (n.name, leader.name, within))
            time.sleep(0.1)

    def check(self, label):
        """Exactly one instance takes writes; every acknowledged write is on
        it; the tokens written never go back."""
        with self.lock:
            leader, _ = self.c.wait_leader(30)
            taking = [n.name for n in self.c.nodes if self.c.writable(n, timeout=2)]
            if taking != [leader.name]:
                raise AssertionError("%s: instances that take writes: %s (leader %s)" % (label, taking, leader.name))
            rows = self.c.sql_ok(leader, "SELECT id, token FROM writes WHERE id > 0 ORDER BY id")
            have = {}
            for line in rows.splitlines():
                i, t = line.split("|")
                have[int(i)] = int(t)
            missing = [i for i, _ in self.w.acked if i not in have]
            if missing:
                raise AssertionError("%s: %d acknowledged writes lost, e.g. %s" % (label, len(missing), missing[:5]))
            tokens = [have[i] for i in sorted(have)]
            back = [(a, b) for a, b in zip(tokens, tokens[1:]) if b < a]
            if back:
                raise AssertionError("%s: a token goes back in the data: %s" % (label, back[:3]))
            self.log("%s: checked: only %s takes writes; %d acknowledged writes all present; tokens in order"
                     % (label, leader.name, len(self.w.acked)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "faults"])
    p.add_argument("--dir", default="/tmp/leasehold-pg-example")
    p.add_argument("--leasehold", default=shutil.which("leasehold") or "target/release/leasehold")
    p.add_argument("--ports", help="12 free loopback ports: per node pg, peer, api, metrics")
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    ports = [int(x) for x in a.ports.split(",")] if a.ports else free_ports(12)
    if len(ports) != 12:
        sys.exit("--ports: 12 ports")
    state = os.path.join(a.dir + ".json")
    if a.command == "down":
        return down(state)
    c = Cluster(a.dir, os.path.abspath(a.leasehold), ports)
    # SIGTERM (a test's deadline) stops what this started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("demo.py: terminated"))
    c.build()
    if a.command == "up":
        try:
            c.start()
            leader, _ = c.wait_leader(60)
        except BaseException:
            c.stop()
            raise
        with open(state, "w") as f:
            json.dump({"dir": c.dir, "bin": c.bin, "user": c.user,
                       "nodes": [{"name": n.name, "sidecar": n.sidecar.pid, "data": n.data, "pg": n.address,
                                  "api": n.api} for n in c.nodes]}, f)
        print("leader: %s (PostgreSQL %s)" % (leader.name, leader.address))
        for n in c.nodes:
            print("  %s  PostgreSQL %s (log %s/%s/%s.pg.log)  sidecar pid %d, API http://%s" % (
                n.name, n.address, c.dir, n.name, n.name, n.sidecar.pid, n.api))
        print("Write:  python3 %s %s" % (os.path.join(HERE, "writer.py"), ",".join(n.api for n in c.nodes)))
        print("Stop:   python3 %s down --dir %s" % (os.path.abspath(__file__), a.dir))
        return 0
    try:
        c.start()
        results = Suite(c).run(a.rounds)
        print(json.dumps(results))
        print("faults: every check passed")
        return 0
    except AssertionError as e:
        print("faults: FAILED: %s (logs in %s)" % (e, c.dir), flush=True)
        return 1
    finally:
        c.stop()


def down(state):
    with open(state) as f:
        s = json.load(f)
    for n in s["nodes"]:
        try:
            os.kill(n["sidecar"], signal.SIGINT)
        except ProcessLookupError:
            pass
    time.sleep(1)
    for n in s["nodes"]:
        argv = [os.path.join(s["bin"], "pg_ctl"), "-D", n["data"], "stop", "-m", "fast"]
        if s["user"]:
            argv = ["runuser", "-u", s["user"], "--"] + argv
        subprocess.run(argv, capture_output=True, timeout=60)
    os.unlink(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
