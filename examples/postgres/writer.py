#!/usr/bin/env python3
"""The check-then-write loop of an application beside leasehold, with
psycopg 3: before each write, ask the sidecar of the instance it writes to
whether it holds the lease (or keep the deadline it gave), write the
fencing token into the row, and count a write as acknowledged only if its
commit returned before the lease's deadline.

    writer.py API[,API...]    writes until Ctrl-C; prints each acknowledged id

The deadline is on CLOCK_BOOTTIME, which every process of the host (every
container of a pod) shares: the application compares it with its own clock.
"""

import json
import sys
import time
import urllib.error
import urllib.request

try:
    import psycopg
except ImportError:  # the module still loads for its helpers
    psycopg = None

# Stop this long before the deadline: a commit must return before it.
MARGIN_NS = 50_000_000


def boottime_ns():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def ask(api, timeout=0.5):
    """The sidecar's answer to GET /v1/leader if it holds the lease."""
    try:
        with urllib.request.urlopen("http://%s/v1/leader" % api, timeout=timeout) as r:
            body = json.loads(r.read())
            return body if r.status == 200 and body.get("is_leader") else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Writer:
    """Writes ids 1, 2, 3... to whichever instance holds the lease."""

    def __init__(self, apis):
        self.apis = apis
        self.next_id = 1
        self.acked = []  # (id, token) whose commit returned in time
        self.lease = None  # (api, address, token, deadline_ns)
        self.conn = None
        self.conn_address = None
        self.notices = []
        self.last_ack_at = None  # time.monotonic() of the last acknowledged write
        self.first_ack_after = {}  # token -> monotonic time of its first acknowledged write
        self.last_ack_of = {}  # token -> monotonic time of its last acknowledged write

    def find_leader(self):
        for api in self.apis:
            body = ask(api)
            if body and body.get("lease_deadline_boottime_ns"):
                self.lease = (api, body["leader_address"], body["fencing_token"], body["lease_deadline_boottime_ns"])
                return True
        self.lease = None
        return False

    def connect(self, address):
        if self.conn is not None and self.conn_address == address and not self.conn.closed:
            return self.conn
        self.close()
        host, port = address.rsplit(":", 1)
        self.conn = psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                                    connect_timeout=2, autocommit=True)
        # A commit whose wait for the synchronous standby is cancelled (by
        # the statement timeout) returns with a warning, not an error,
        # though no standby has it: such a write is not acknowledged.
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        self.conn_address = address
        return self.conn

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def step(self):
        """One attempt; True if a write was acknowledged."""
        if self.lease is None or boottime_ns() >= self.lease[3] - MARGIN_NS:
            # The cached deadline passed: ask again (the sidecar renews it).
            if not self.find_leader():
                time.sleep(0.02)
                return False
        _, address, token, deadline = self.lease
        # Every attempt takes a new id: one that failed may still have
        # committed somewhere.
        i = self.next_id
        self.next_id += 1
        try:
            conn = self.connect(address)
            # Each write's own deadline: commits that return later are
            # not acknowledged (the lease may have passed to another).
            remaining_ms = min(5000, max(1, (deadline - MARGIN_NS - boottime_ns()) // 1_000_000))
            conn.execute("SET statement_timeout = %d" % remaining_ms)
            self.notices.clear()
            conn.execute("INSERT INTO writes (id, token) VALUES (%s, %s)", (i, token))
        except Exception:
            self.close()
            self.lease = None
            time.sleep(0.02)
            return False
        unreplicated = any("synchronous replication" in n for n in self.notices)
        if boottime_ns() < deadline and not unreplicated:
            self.acked.append((i, token))
            now = time.monotonic()
            self.first_ack_after.setdefault(token, now)
            self.last_ack_of[token] = now
            self.last_ack_at = now
            return True
        return False


def main():
    if len(sys.argv) != 2 or psycopg is None:
        print(__doc__, file=sys.stderr)
        return 2
    w = Writer(sys.argv[1].split(","))
    try:
        while True:
            if w.step():
                print("acknowledged id %d token %d" % w.acked[-1], flush=True)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
