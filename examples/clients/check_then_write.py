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


def ask():
    """The leader JSON of /v1/leader; a 503 (not the leader) has the same body."""
    try:
        with urllib.request.urlopen(API + "/v1/leader", timeout=2) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


class Lease:
    """The token and deadline this node holds, if it leads."""

    def __init__(self):
        self.changed = threading.Condition()
        self.token, self.deadline = None, 0
        self.events = 0  # how many watch events came

    def grant(self, leader, events):
        """Keeps an answer of /v1/leader, unless a watch event came since it
        was asked for (events != self.events): then it may be stale."""
        with self.changed:
            if events == self.events and leader["is_leader"]:
                self.token, self.deadline = leader["fencing_token"], leader["lease_deadline_boottime_ns"]

    def revoke(self):
        """A watch event: whatever it says, ask again before the next write."""
        with self.changed:
            self.events += 1
            self.token, self.deadline = None, 0
            self.changed.notify_all()

    def token_now(self):
        """The token while the lease lasts on CLOCK_BOOTTIME (else None), and
        how many events came."""
        with self.changed:
            if time.clock_gettime_ns(time.CLOCK_BOOTTIME) < self.deadline:
                return self.token, self.events
            return None, self.events

    def wait_for_event(self, events, seconds):
        """Waits until an event after the first `events` comes, at most `seconds`."""
        with self.changed:
            self.changed.wait_for(lambda: self.events != events, seconds)


def follow(lease):
    """/v1/watch: a hand-over ends the lease before its deadline."""
    while True:
        try:
            with urllib.request.urlopen(API + "/v1/watch", timeout=30) as events:
                for line in events:
                    if line.startswith(b"data: "):
                        lease.revoke()
        except Exception:  # the stream broke or the sidecar does not answer
            pass
        lease.revoke()
        time.sleep(1)


def store(token, record):
    print(token, record, flush=True)


def main():
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    lease = Lease()
    threading.Thread(target=follow, args=(lease,), daemon=True).start()
    record = 0
    while record < count:
        token, events = lease.token_now()
        if token is not None:
            store(token, record)
            record += 1
            time.sleep(0.02)
            continue
        try:  # the lease ran out (renewals send no event) or is elsewhere: ask
            leader = ask()
            lease.grant(leader, events)
            if not leader["is_leader"]:
                lease.wait_for_event(events, 1)  # until who leads changes, or 1 s
        except Exception:  # the sidecar does not answer: no lease
            time.sleep(0.1)


if __name__ == "__main__":
    main()
