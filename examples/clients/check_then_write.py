"""Check, then write: hold leasehold's lease before each write, with its token.

    python3 check_then_write.py [API] [COUNT]

store() stands for your storage's write: it must refuse a token lower than
the highest it has seen (see examples/postgres for a PostgreSQL one).
"""
import json
import sys
import threading
import time
import urllib.error
import urllib.request

API = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:4040"


def ask(path, timeout=2.0):
    """The leader JSON of GET path; a 503 (not the leader) has the same body."""
    try:
        with urllib.request.urlopen(API + path, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


class Lease:
    """The token and deadline this node holds, if it leads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.token, self.deadline = None, 0
        self.events = 0  # how many watch events were applied

    def update(self, leader, events=None):
        """Applies a leader JSON; an answer asked for before the latest
        watch event (events != self.events) may be stale and is dropped."""
        with self.lock:
            if events is None:
                self.events += 1
            elif events != self.events:
                return
            if leader.get("is_leader"):
                self.token, self.deadline = leader["fencing_token"], leader["lease_deadline_boottime_ns"]
            else:
                self.token, self.deadline = None, 0

    def token_now(self):
        """The token while the lease lasts on CLOCK_BOOTTIME, else None."""
        with self.lock:
            if time.clock_gettime_ns(time.CLOCK_BOOTTIME) < self.deadline:
                return self.token
            return None


def follow(lease):
    """/v1/watch: a hand-over ends the lease before its deadline."""
    while True:
        try:
            with urllib.request.urlopen(API + "/v1/watch", timeout=30) as events:
                for line in events:
                    if line.startswith(b"data: "):
                        lease.update(json.loads(line[6:]))
        except OSError:
            lease.update({})
            time.sleep(1)


def store(token, record):
    print(token, record, flush=True)


def main():
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    lease = Lease()
    threading.Thread(target=follow, args=(lease,), daemon=True).start()
    record = 0
    while record < count:
        token = lease.token_now()
        if token is not None:
            store(token, record)
            record += 1
            time.sleep(0.02)
            continue
        try:  # the lease ran out (renewals send no event) or is elsewhere: ask
            events = lease.events
            leader = ask("/v1/leader")
            lease.update(leader, events)
            if not leader["is_leader"]:
                ask("/v1/leader?wait=10s", timeout=12)  # until who leads changes
        except OSError:
            time.sleep(0.1)  # the sidecar does not answer: no lease


if __name__ == "__main__":
    main()
