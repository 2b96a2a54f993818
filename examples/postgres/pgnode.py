#!/usr/bin/env python3
"""What a leasehold sidecar runs against its local PostgreSQL instance.

    pgnode.py position   --position-exec: fence to the upstream leasehold
                         names, then print "BRANCH LSN"
    pgnode.py elected    --on-elected: promote, record the token, open writes
    pgnode.py demoted    --on-demoted: fence (no more writes, no more commits
                         confirmed)
    pgnode.py health     --health-check-exec: the instance answers

The instance is described by the sidecar's environment, which hooks inherit:
PGNODE_NAME (its application_name and slot name), PGNODE_PORT, PGNODE_DATA,
PGNODE_PEERS (the other members' names, comma-separated), PGNODE_BIN (the
PostgreSQL binaries) and PGNODE_USER (the OS user that owns the data
directory, when the sidecar runs as root). Only the standard library and
psql are used: a hook must start fast and need nothing installed.

The rules it follows are docs/positions.md's: a read counts only after the
database takes writes from exactly the upstream it is told (or none), a
standby reports what it applied (synchronous_commit = remote_apply, so
that is what it confirmed), and every instance that does not hold the lease
is read-only with no commit confirmed.
"""

import os
import shutil
import subprocess
import sys
import time

NAME = os.environ.get("PGNODE_NAME", "")
PORT = os.environ.get("PGNODE_PORT", "5432")
DATA = os.environ.get("PGNODE_DATA", "")
BIN = os.environ.get("PGNODE_BIN", "/usr/lib/postgresql/15/bin")
USER = os.environ.get("PGNODE_USER", "")
PEERS = [p for p in os.environ.get("PGNODE_PEERS", "").split(",") if p]
# A commit waits for no standby while fenced: no standby has this name.
FENCED = "leasehold_fenced"
# The application_name of this tool's own sessions, which a fence spares.
TOOL = "leasehold-pgnode"


class Failed(Exception):
    pass


def as_owner(argv):
    """argv run as the data directory's owner when this runs as root."""
    if USER and os.geteuid() == 0:
        return ["runuser", "-u", USER, "--"] + argv
    return argv


def sql(query, port=PORT, timeout=5, options="", host="127.0.0.1"):
    """One psql call; the rows, as tuples of strings. `options` are
    settings of the session (PGOPTIONS)."""
    argv = [
        os.path.join(BIN, "psql"), "-X", "-A", "-t", "-q", "-F", "\t",
        "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres",
        "-v", "ON_ERROR_STOP=1", "-c", query,
    ]
    env = dict(os.environ, PGCONNECT_TIMEOUT="2", PGAPPNAME=TOOL,
               PGOPTIONS="-c statement_timeout=%d %s" % (timeout * 1000, options))
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 2, env=env)
    except subprocess.TimeoutExpired:
        raise Failed("psql timed out: " + query[:60])
    if out.returncode != 0:
        raise Failed("psql: " + out.stderr.strip()[:300])
    return [tuple(line.split("\t")) for line in out.stdout.splitlines() if line]


def in_recovery():
    return sql("SELECT pg_is_in_recovery()")[0][0] == "t"


def conninfo(upstream):
    host, port = upstream.rsplit(":", 1)
    return "host=%s port=%s user=postgres application_name=%s" % (host, port, NAME)


def fence_primary():
    """No new write, and no commit in flight confirmed: every session but
    this one ends, and a commit waits for a standby that does not exist."""
    sql("ALTER SYSTEM SET default_transaction_read_only = on")
    sql("ALTER SYSTEM SET synchronous_standby_names = '%s'" % FENCED)
    sql("SELECT pg_reload_conf()")
    sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> '%s'" % TOOL
    )


def follow(upstream):
    """A standby takes WAL from `upstream` only ('' for none); returns once
    its WAL receiver is gone or connected there."""
    want = conninfo(upstream) if upstream else ""
    rows = sql("SHOW primary_conninfo")
    have = rows[0][0] if rows else ""
    if have != want:
        sql("ALTER SYSTEM SET primary_conninfo = '%s'" % want.replace("'", "''"))
        sql("SELECT pg_reload_conf()")
    if not upstream:
        # The fence has taken effect only once the receiver is gone:
        # PostgreSQL restarts a receiver that is merely killed.
        deadline = time.monotonic() + 2
        while sql("SELECT count(*) FROM pg_stat_wal_receiver")[0][0] != "0":
            if time.monotonic() > deadline:
                raise Failed("the WAL receiver did not stop")
            time.sleep(0.02)


def branch():
    rows = sql("SELECT coalesce(max(token), 0) FROM leasehold_branch")
    return int(rows[0][0])


def position():
    role = os.environ.get("LEASEHOLD_ROLE", "none")
    upstream = os.environ.get("LEASEHOLD_UPSTREAM", "") if role == "follower" else ""
    try:
        recovering = in_recovery()
    except Failed:
        # An instance that stopped, or never became consistent, because
        # its history forked from the leader's is rewound onto it.
        if role == "follower" and upstream:
            note_stuck(upstream)
        raise
    if role == "leader":
        # What --on-elected does, again if it did not finish (or a read
        # that began before this node led fenced it since).
        open_for_writes(int(os.environ.get("LEASEHOLD_TOKEN") or 0))
        recovering = False
    if recovering:
        follow(upstream)
        # What it applied is what it confirmed (remote_apply), and the
        # branch is read from the same applied data.
        lsn = sql("SELECT pg_last_wal_replay_lsn()")[0][0]
        b = branch()
        if role == "follower" and upstream:
            rejoin_if_stuck(upstream)
    else:
        if role != "leader":
            fence_primary()
            if role == "follower" and upstream:
                rejoin(upstream)
        b = branch()
        lsn = sql("SELECT pg_current_wal_flush_lsn()")[0][0]
    print("%d %s" % (b, lsn or "0/0"))


def stuck_path():
    return os.path.join(os.path.dirname(DATA.rstrip("/")), NAME + ".stuck")


def rejoin_if_stuck(upstream):
    """A standby told to follow `upstream` whose receiver has not streamed
    for a few seconds (a history that forked from the new primary's) is
    rewound onto it."""
    streaming = sql("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")[0][0] != "0"
    path = stuck_path()
    if streaming:
        if os.path.exists(path):
            os.unlink(path)
        return
    note_stuck(upstream)


def note_stuck(upstream):
    """Counts how long this instance has failed to follow `upstream`; after
    three seconds of it, rewinds it."""
    path = stuck_path()
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(time.time()))
        return
    with open(path) as f:
        since = float(f.read() or "0")
    age = time.time() - since
    if age > 10:
        # Stale: no read saw this standby since (it was down, or rewound).
        with open(path, "w") as f:
            f.write(str(time.time()))
    elif age > 3:
        os.unlink(path)
        rejoin(upstream)


def rejoin(upstream):
    """Rewinds this instance onto `upstream` and starts it as its standby,
    in the background (a rewind outlasts a position read). Until it is
    back, reads fail, and this node grants no vote."""
    host, port = upstream.rsplit(":", 1)
    try:
        # Only onto a primary: a leader that has not finished its promotion
        # would hand over a history it is about to fork from.
        if sql("SELECT pg_is_in_recovery()", port=port, host=host, timeout=2)[0][0] != "f":
            return
    except Failed:
        return
    lock = os.path.join(os.path.dirname(DATA.rstrip("/")), NAME + ".rejoin")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    log = open(os.path.join(os.path.dirname(DATA.rstrip("/")), NAME + ".rejoin.log"), "a")
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "rejoin-now", upstream],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )


def rejoin_now(upstream):
    lock = os.path.join(os.path.dirname(DATA.rstrip("/")), NAME + ".rejoin")
    try:
        pg_ctl("stop", "-m", "fast")
        # pg_rewind copies the source's configuration files: keep this
        # instance's own (its port among them).
        with open(os.path.join(DATA, "postgresql.conf")) as f:
            own_conf = f.read()
        # pg_rewind first completes a crash recovery in single-user mode,
        # which refuses to run as a standby.
        for signal_file in ("standby.signal", "recovery.signal"):
            if os.path.exists(os.path.join(DATA, signal_file)):
                os.unlink(os.path.join(DATA, signal_file))
        host, port = upstream.rsplit(":", 1)
        source = "host=%s port=%s user=postgres dbname=postgres" % (host, port)
        # pg_rewind reads the source's timeline from its control file, which
        # a promotion updates only at its next checkpoint: without one, a
        # primary promoted a moment ago looks like "the same timeline".
        sql("CHECKPOINT", port=port, host=host, timeout=60)
        out = subprocess.run(
            as_owner([os.path.join(BIN, "pg_rewind"), "-D", DATA, "--source-server=" + source]),
            capture_output=True, text=True, timeout=120,
        )
        print(out.stdout + out.stderr, flush=True)
        if out.returncode != 0:
            # A rewind that failed part way leaves the directory unusable
            # (pg_rewind's documentation): clone it again from the leader,
            # which holds every acknowledged write.
            reclone(source)
        with open(os.path.join(DATA, "postgresql.conf"), "w") as f:
            f.write(own_conf)
        if USER and os.geteuid() == 0:
            subprocess.run(["chown", USER, os.path.join(DATA, "postgresql.conf")], check=True)
        start_fenced(upstream)
    finally:
        os.unlink(lock)


def reclone(source):
    """Replaces the data directory with a copy of the leader's."""
    print("pg_rewind failed: cloning again from %s" % source, flush=True)
    shutil.rmtree(DATA)
    out = subprocess.run(
        as_owner([os.path.join(BIN, "pg_basebackup"), "-D", DATA, "-X", "stream", "-d", source]),
        capture_output=True, text=True, timeout=600,
    )
    print(out.stdout + out.stderr, flush=True)
    if out.returncode != 0:
        raise Failed("pg_basebackup failed")


def pg_ctl(*args):
    logfile = os.path.join(os.path.dirname(DATA.rstrip("/")), NAME + ".pg.log")
    argv = as_owner([os.path.join(BIN, "pg_ctl"), "-D", DATA, "-l", logfile, "-w", "-t", "60"] + list(args))
    return subprocess.run(argv, capture_output=True, text=True, timeout=90).returncode


def start_fenced(upstream=""):
    """Starts this instance as a read-only standby of `upstream` (or of
    none): the fence at boot, whatever it was before it stopped."""
    auto = os.path.join(DATA, "postgresql.auto.conf")
    keep = []
    if os.path.exists(auto):
        with open(auto) as f:
            keep = [l for l in f if not l.split("=")[0].strip() in (
                "primary_conninfo", "default_transaction_read_only", "synchronous_standby_names", "primary_slot_name")]
    keep += [
        "primary_conninfo = '%s'\n" % (conninfo(upstream) if upstream else ""),
        "primary_slot_name = '%s'\n" % NAME,
        "default_transaction_read_only = on\n",
        "synchronous_standby_names = '%s'\n" % FENCED,
    ]
    with open(auto, "w") as f:
        f.writelines(keep)
    open(os.path.join(DATA, "standby.signal"), "w").close()
    if os.path.exists(stuck_path()):
        os.unlink(stuck_path())
    if USER and os.geteuid() == 0:
        subprocess.run(["chown", USER, auto, os.path.join(DATA, "standby.signal")], check=True)
    # After a kill -9 of the postmaster its backends take a moment to
    # notice and exit; until then the old shared memory is still in use.
    for _ in range(10):
        if pg_ctl("start") == 0:
            return
        time.sleep(1)
    raise Failed("pg_ctl start failed")


def elected():
    open_for_writes(int(os.environ["LEASEHOLD_TOKEN"]))


def open_for_writes(token):
    """Promotes the instance, records `token` as its branch, and opens it
    for writes with synchronous replication to any half of the others;
    each step only if not done yet."""
    want_names = "ANY %d (%s)" % (max(1, (len(PEERS) + 1) // 2), ", ".join(PEERS))
    rows = sql(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), "
        "current_setting('synchronous_standby_names'), "
        "EXISTS (SELECT 1 FROM leasehold_branch WHERE token = %d)" % token
    )
    recovering, read_only, names, recorded = rows[0]
    if recovering == "f" and read_only == "off" and names == want_names and recorded == "t":
        return
    if recovering == "t":
        sql("ALTER SYSTEM SET primary_conninfo = ''")
        sql("SELECT pg_reload_conf()")
        sql("SELECT pg_promote(true, 60)", timeout=65)
    # The token record comes first in the new history: it is the branch
    # every later write of this leadership extends (committed locally, with
    # no standby waited for; writes are still closed).
    sql(
        "INSERT INTO leasehold_branch (token) VALUES (%d) ON CONFLICT DO NOTHING" % token,
        options="-c synchronous_commit=local -c default_transaction_read_only=off",
    )
    for peer in PEERS:
        sql(
            "SELECT pg_create_physical_replication_slot('%s') WHERE NOT EXISTS "
            "(SELECT 1 FROM pg_replication_slots WHERE slot_name = '%s')" % (peer, peer)
        )
    sql("ALTER SYSTEM SET synchronous_standby_names = '%s'" % want_names)
    sql("ALTER SYSTEM SET default_transaction_read_only = off")
    sql("SELECT pg_reload_conf()")


def demoted():
    if not in_recovery():
        fence_primary()


def health():
    sql("SELECT 1", timeout=2)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if cmd == "position":
            position()
        elif cmd == "elected":
            elected()
        elif cmd == "demoted":
            demoted()
        elif cmd == "health":
            health()
        elif cmd == "rejoin-now":
            rejoin_now(sys.argv[2])
        elif cmd == "start-fenced":
            start_fenced(sys.argv[2] if len(sys.argv) > 2 else "")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Failed as e:
        print("pgnode %s %s: %s" % (NAME, cmd, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
