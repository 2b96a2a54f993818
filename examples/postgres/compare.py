#!/usr/bin/env python3
"""leasehold beside Patroni on one machine, the same PostgreSQL and the
same replication settings: write unavailability and acknowledged writes
lost, through kill -9 of the primary and a planned switchover.

    compare.py --leasehold BIN --patroni BIN [--trials 10] [--dir DIR]
               [--only leasehold|patroni] [--setting default|small]

For each system and setting, `--trials` failovers (kill -9 of the primary's
postgres and of its leasehold sidecar or Patroni) and as many switchovers
(SIGTERM of the leader's sidecar; `POST /switchover` to Patroni). The
writer of writer.py writes on: unavailability is the time from its last
write acknowledged on the old primary to its first on the new one. Prints
one JSON line per trial and a summary (medians) at the end.

Patroni runs with etcd (Debian's etcd-server), as its documentation
describes: `synchronous_mode: true` with one synchronous standby,
`use_pg_rewind`, `use_slots`, and the example's PostgreSQL parameters.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import demo  # noqa: E402
import writer  # noqa: E402

PG_PARAMETERS = {
    "wal_level": "replica",
    "wal_log_hints": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "512MB",
    "hot_standby": "on",
    "synchronous_commit": "remote_apply",
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "200ms",
}

# (ttl, loop_wait, retry_timeout): Patroni's defaults, and its smallest
# allowed TTL with loop_wait + 2 * retry_timeout <= ttl.
PATRONI = {"default": (30, 10, 10), "small": (20, 1, 3)}
LEASEHOLD = {"default": "2s", "small": "1s"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Measure:
    """Runs the writer on its own thread and times the gaps."""

    def __init__(self, w):
        self.w = w
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.halt.is_set():
            with self.lock:
                self.w.step()

    def gap(self, act, new_primary, within=180):
        """Runs `act`; returns the unavailability in ms once a write is
        acknowledged on another primary than before."""
        deadline = time.monotonic() + 60
        while self.w.last_ack_at is None or time.monotonic() - self.w.last_ack_at > 0.2:
            if time.monotonic() > deadline:
                raise AssertionError("the writer acknowledges nothing before the fault")
            time.sleep(0.02)
        before = self.w.primary_address()
        n_before = len(self.w.acked)
        act()
        t_act = time.monotonic()
        deadline = t_act + within
        while True:
            with self.lock:
                acked = self.w.acked[n_before:]
                times = self.w.ack_times[n_before:]
                addresses = self.w.ack_addresses[n_before:]
            moved = [t for t, a in zip(times, addresses) if a != before]
            if moved:
                last_old = max([t for t, a in zip(times, addresses) if a == before] + [self.w.ack_times[n_before - 1]])
                return round((moved[0] - last_old) * 1000)
            if time.monotonic() > deadline:
                raise AssertionError("no write acknowledged on a new primary within %ss" % within)
            time.sleep(0.01)

    def stop(self):
        self.halt.set()
        self.thread.join(timeout=30)


class TimedWriter(writer.Writer):
    """The example's writer, remembering when and where each write was
    acknowledged."""

    def __init__(self, apis):
        super().__init__(apis)
        self.ack_times = []
        self.ack_addresses = []

    def primary_address(self):
        return self.conn_address

    def step(self):
        ok = super().step()
        if ok:
            self.ack_times.append(self.last_ack_at)
            self.ack_addresses.append(self.conn_address)
        return ok


class PatroniWriter(TimedWriter):
    """Finds the primary as HAProxy would, by Patroni's `GET /primary`;
    Patroni gives an application no lease deadline, so a write is
    acknowledged when its commit returns."""

    def find_leader(self):
        for api in self.apis:
            try:
                with urllib.request.urlopen("http://%s/primary" % api, timeout=0.5) as r:
                    body = json.loads(r.read())
                    if r.status == 200:
                        address = "%s:%s" % (body.get("host", "127.0.0.1"), body["port"]) if "port" in body else None
                        address = address or self.patroni_pg[api]
                        self.lease = (api, address, int(body.get("timeline", 0)), 1 << 62)
                        return True
            except Exception:
                continue
        self.lease = None
        return False


# --- Patroni -------------------------------------------------------------------
class PatroniCluster:
    def __init__(self, dir, patroni, setting, ports):
        self.dir = os.path.abspath(dir)
        self.patroni = patroni
        self.bin = demo.pg_bin()
        self.ttl, self.loop_wait, self.retry = PATRONI[setting]
        self.etcd_client, self.etcd_peer = ports[0], ports[1]
        self.nodes = []
        for i, name in enumerate(demo.NAMES):
            pg, rest = ports[2 + 2 * i], ports[3 + 2 * i]
            self.nodes.append({"name": name, "pg": pg, "rest": "127.0.0.1:%d" % rest, "proc": None})
        self.etcd = None

    def start(self):
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        subprocess.run(["chown", "-R", "postgres", self.dir], check=True)
        log_etcd = open(os.path.join(self.dir, "etcd.log"), "w")
        self.etcd = subprocess.Popen([
            "etcd", "--name", "e0", "--data-dir", os.path.join(self.dir, "etcd"),
            "--listen-client-urls", "http://127.0.0.1:%d" % self.etcd_client,
            "--advertise-client-urls", "http://127.0.0.1:%d" % self.etcd_client,
            "--listen-peer-urls", "http://127.0.0.1:%d" % self.etcd_peer,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.etcd_peer,
            "--initial-cluster", "e0=http://127.0.0.1:%d" % self.etcd_peer,
        ], stdout=log_etcd, stderr=log_etcd)
        for n in self.nodes:
            self.write_config(n)
        self.start_node(self.nodes[0])
        self.wait_primary(120)
        for n in self.nodes[1:]:
            self.start_node(n)
        for n in self.nodes[1:]:
            self.wait_streaming(n, 180)

    def write_config(self, n):
        params = "\n".join("        %s: '%s'" % kv for kv in PG_PARAMETERS.items())
        text = """scope: compare
name: %(name)s
restapi:
  listen: %(rest)s
  connect_address: %(rest)s
etcd3:
  hosts: 127.0.0.1:%(etcd)d
bootstrap:
  dcs:
    ttl: %(ttl)d
    loop_wait: %(loop)d
    retry_timeout: %(retry)d
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
%(params)s
  initdb:
    - auth: trust
  pg_hba:
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:%(pg)d
  connect_address: 127.0.0.1:%(pg)d
  data_dir: %(data)s
  bin_dir: %(bin)s
  pgpass: %(dir)s/%(name)s.pgpass
  authentication:
    superuser: {username: postgres}
    replication: {username: postgres}
    rewind: {username: postgres}
  parameters:
    unix_socket_directories: '%(dir)s'
""" % {"name": n["name"], "rest": n["rest"], "etcd": self.etcd_client, "ttl": self.ttl, "loop": self.loop_wait,
            "retry": self.retry, "params": params, "pg": n["pg"], "data": os.path.join(self.dir, n["name"]),
            "bin": self.bin, "dir": self.dir}
        path = os.path.join(self.dir, n["name"] + ".yml")
        with open(path, "w") as f:
            f.write(text)

    def start_node(self, n):
        out = open(os.path.join(self.dir, n["name"] + ".patroni.log"), "a")
        n["proc"] = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", self.patroni, os.path.join(self.dir, n["name"] + ".yml")],
            stdout=out, stderr=out, start_new_session=True)

    def role(self, n):
        try:
            with urllib.request.urlopen("http://%s/patroni" % n["rest"], timeout=0.5) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def answering(self, path):
        """The first node whose Patroni REST API answers 200 on `path`."""
        for n in self.nodes:
            try:
                with urllib.request.urlopen("http://%s%s" % (n["rest"], path), timeout=0.5) as r:
                    if r.status == 200:
                        return n
            except Exception:
                continue
        return None

    def primary(self):
        return self.answering("/primary")

    def wait_primary(self, within):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            n = self.primary()
            if n is not None:
                return n
            time.sleep(0.2)
        raise AssertionError("Patroni elected no primary within %ss" % within)

    def wait_streaming(self, n, within=180):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            s = self.role(n)
            if s and s.get("role") in ("replica", "sync_standby") and s.get("state") in ("running", "streaming") \
                    and (s.get("replication_state") in (None, "streaming")):
                p = self.primary()
                if p is not None and p is not n:
                    return
            time.sleep(0.2)
        raise AssertionError("Patroni node %s not a streaming replica within %ss" % (n["name"], within))

    def wait_sync(self, within=180):
        """Waits until a replica is the synchronous standby (`GET /sync`
        answers 200 on it): in synchronous_mode only it may be promoted."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            n = self.answering("/sync")
            if n is not None:
                return n
            time.sleep(0.2)
        raise AssertionError("Patroni designated no synchronous standby within %ss" % within)

    def kill(self, n):
        """kill -9 of the node's Patroni and postmaster."""
        pid = None
        try:
            with open(os.path.join(self.dir, n["name"], "postmaster.pid")) as f:
                pid = int(f.readline())
        except (OSError, ValueError):
            pass
        os.killpg(n["proc"].pid, signal.SIGKILL)
        n["proc"].wait()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def switchover(self, leader, candidate):
        body = json.dumps({"leader": leader["name"], "candidate": candidate["name"]}).encode()
        req = urllib.request.Request("http://%s/switchover" % leader["rest"], data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()

    def stop(self):
        for n in self.nodes:
            if n["proc"] is not None and n["proc"].poll() is None:
                os.killpg(n["proc"].pid, signal.SIGTERM)
        for n in self.nodes:
            if n["proc"] is not None:
                try:
                    n["proc"].wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(n["proc"].pid, signal.SIGKILL)
                    n["proc"].wait()
            pidfile = os.path.join(self.dir, n["name"], "postmaster.pid")
            if os.path.exists(pidfile):
                subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, "pg_ctl"), "-D",
                                os.path.join(self.dir, n["name"]), "stop", "-m", "immediate"], capture_output=True)
        if self.etcd is not None:
            self.etcd.terminate()
            self.etcd.wait(timeout=30)

    def rows(self, n):
        out = subprocess.run([os.path.join(self.bin, "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(n["pg"]),
                              "-U", "postgres", "-d", "postgres", "-c", "SELECT id FROM writes WHERE id > 0"],
                             capture_output=True, text=True, timeout=60)
        return {int(x) for x in out.stdout.split()}


def record(results, trial, gap, acked, have):
    """One trial's result: its unavailability, and the acknowledged writes
    missing from the new primary's rows (`have`)."""
    system, setting, kind, t = trial
    lost = [i for i, _ in acked if i not in have]
    r = {"system": system, "setting": setting, "fault": kind, "trial": t, "unavailable_ms": gap,
         "acked": len(acked), "lost": len(lost)}
    print(json.dumps(r), flush=True)
    results.append(r)


def run_patroni(args, setting, ports, results):
    c = PatroniCluster(os.path.join(args.dir, "patroni-" + setting), args.patroni, setting, ports)
    try:
        c.start()
        p = c.wait_primary(60)
        subprocess.run([os.path.join(c.bin, "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(p["pg"]), "-U",
                        "postgres", "-d", "postgres", "-c",
                        "CREATE TABLE writes (id bigint PRIMARY KEY, token bigint NOT NULL, at timestamptz DEFAULT now())"],
                       check=True, capture_output=True)
        w = PatroniWriter([n["rest"] for n in c.nodes])
        w.patroni_pg = {n["rest"]: "127.0.0.1:%d" % n["pg"] for n in c.nodes}
        m = Measure(w)
        for kind in ("kill", "switchover"):
            for t in range(args.trials):
                old = c.wait_primary(120)
                for n in c.nodes:
                    if n is not old:
                        c.wait_streaming(n)
                # In synchronous_mode only the synchronous standby may be
                # promoted, by a failover or a switchover.
                sync = c.wait_sync()
                if kind == "kill":
                    gap = m.gap(lambda: c.kill(old), None)
                    c.start_node(old)
                else:
                    gap = m.gap(lambda: c.switchover(old, sync), None)
                new = c.wait_primary(120)
                with m.lock:
                    record(results, ("patroni", setting, kind, t), gap, w.acked, c.rows(new))
        m.stop()
    finally:
        c.stop()


def run_leasehold(args, setting, ports, results):
    demo.LEASE = LEASEHOLD[setting]
    c = demo.Cluster(os.path.join(args.dir, "leasehold-" + setting), os.path.abspath(args.leasehold), ports)
    try:
        c.build()
        c.start()
        suite = demo.Suite(c)
        suite.t0 = time.monotonic()
        c.wait_leader(60)
        w = TimedWriter([n.api for n in c.nodes])
        m = Measure(w)
        suite.w = w
        for kind in ("kill", "switchover"):
            for t in range(args.trials):
                old, _ = c.wait_leader(60)
                for n in c.nodes:
                    if n is not old:
                        suite.wait_streaming(n)
                if kind == "kill":
                    gap = m.gap(lambda: suite.kill_both(old), None)
                    suite.restart(old, kill_pg=True)
                else:
                    def act():
                        old.sidecar.send_signal(signal.SIGTERM)
                        old.sidecar.wait(timeout=30)
                    gap = m.gap(act, None)
                    suite.restart(old, kill_pg=False)
                new, _ = c.wait_leader(60)
                with m.lock:
                    rows = c.sql_ok(new, "SELECT id FROM writes WHERE id > 0")
                    record(results, ("leasehold", setting, kind, t), gap, w.acked, {int(x) for x in rows.split()})
        m.stop()
    finally:
        c.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leasehold", default="target/release/leasehold")
    p.add_argument("--patroni", default=shutil.which("patroni") or "patroni")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--dir", default="/tmp/leasehold-compare")
    p.add_argument("--only", choices=["leasehold", "patroni"])
    p.add_argument("--setting", choices=["default", "small"])
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("compare.py: terminated"))
    results = []
    settings = [a.setting] if a.setting else ["default", "small"]
    for system, run in (("leasehold", run_leasehold), ("patroni", run_patroni)):
        if a.only and a.only != system:
            continue
        for setting in settings:
            log("== %s, %s setting" % (system, setting))
            run(a, setting, demo.free_ports(12), results)
    summary = {}
    for r in results:
        key = "%s %s %s" % (r["system"], r["setting"], r["fault"])
        summary.setdefault(key, {"gaps": [], "lost": 0})
        summary[key]["gaps"].append(r["unavailable_ms"])
        summary[key]["lost"] += r["lost"]
    for key, s in summary.items():
        print("%-36s trials %2d  median %6d ms  min %6d  max %6d  acknowledged writes lost %d" % (
            key, len(s["gaps"]), statistics.median(s["gaps"]), min(s["gaps"]), max(s["gaps"]), s["lost"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
