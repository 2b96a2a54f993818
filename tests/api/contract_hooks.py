"""Checks and hooks schemathesis runs against a live sidecar (tests/api_contract.rs).

- Waits are cut to at most MAX_WAIT_MS, so that a run of hundreds of long
  polls and hand-overs ends in minutes; what a wait means is unchanged.
- `answers_within_its_wait`: no answer comes later than its wait (at most
  60 s) plus a margin; an answer without a wait comes at once (a hand-over
  asks the consensus loop, which answers within 5 s).
- `watch_events_are_leader_json`: each event of /v1/watch carries a Leader
  object as docs/openapi.yaml gives it.
- `only_documented_5xx`: a 5xx is refused unless it is the documented answer
  of that operation and state: 503 "this node does not hold the lease" on
  the role checks, 504 after a hand-over's wait. A 500, a 502, or a 503 of
  a mutating endpoint (the consensus loop did not answer) always fails.
- Every accepted hand-over is logged, with CLOCK_MONOTONIC instants, to
  $LEASEHOLD_HANDOVER_LOG, so that the observer check can tell planned
  hand-overs from overlapping leases.
"""
import json
import os
import re
import time
from pathlib import Path

import jsonschema
import referencing
import schemathesis
import yaml

MAX_WAIT_MS = 1500
MARGIN_S = 1.5
SPEC = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())
REGISTRY = referencing.Registry().with_resource("urn:spec", referencing.Resource.from_contents(SPEC, referencing.jsonschema.DRAFT202012))
LEADER = jsonschema.Draft202012Validator({"$ref": "urn:spec#/components/schemas/Leader"}, registry=REGISTRY)
WAIT = re.compile(r"^([0-9]{1,9})(ms|s|m)$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60000}
HAND_OVERS = ("/v1/step-down", "/v1/transfer")
ROLE_CHECKS = ("/v1/leader", "/", "/primary", "/master", "/leader", "/read-write", "/replica", "/read-only", "/readyz")
STARTED = {}


def wait_ms(query):
    """The wait a query asks for, in ms (None: none, or not of the pattern)."""
    m = WAIT.match(str((query or {}).get("wait", "")))
    return int(m.group(1)) * UNIT_MS[m.group(2)] if m else None


@schemathesis.hook
def before_call(context, case, kwargs):
    w = wait_ms(case.query)
    if w is not None and w > MAX_WAIT_MS:
        case.query["wait"] = f"{MAX_WAIT_MS}ms"
    STARTED[id(case)] = time.monotonic_ns()


@schemathesis.hook
def after_call(context, case, response):
    started = STARTED.pop(id(case), None)
    log = os.environ.get("LEASEHOLD_HANDOVER_LOG")
    path = case.operation.path
    if log and started is not None and path in HAND_OVERS and case.method.upper() == "POST" and response.status_code in (200, 504):
        with open(log, "a") as f:
            f.write(f"{case.operation.base_url or ''} {started} {time.monotonic_ns()}\n")


@schemathesis.check
def answers_within_its_wait(ctx, response, case):
    w = wait_ms(case.query)
    path = case.operation.path
    limit = (min(w, 60000) / 1000 if w is not None else 0) + MARGIN_S
    if path in HAND_OVERS:
        limit += 5
    if response.elapsed > limit:
        raise AssertionError(f"answered after {response.elapsed:.2f}s, more than its wait allows ({limit:.2f}s)")


@schemathesis.check
def watch_events_are_leader_json(ctx, response, case):
    ctype = next((v[0] for k, v in response.headers.items() if k.lower() == "content-type"), "")
    if not ctype.startswith("text/event-stream") or case.method.upper() == "HEAD":
        return
    events = [line[6:] for line in response.content.decode().split("\n") if line.startswith("data: ")]
    if not events:
        raise AssertionError("the watch stream sent no event")
    for data in events:
        LEADER.validate(json.loads(data))


@schemathesis.check
def only_documented_5xx(ctx, response, case):
    status, path = response.status_code, case.operation.path
    if status < 500:
        return
    if status == 503 and path in ROLE_CHECKS:
        return
    if status == 504 and path in HAND_OVERS and wait_ms(case.query) is not None:
        return
    raise AssertionError(f"{status} on {case.method} {path}: {response.content[:200]!r}")
