"""Prints the fault harness's JSON reports as the table of docs/reliability.md."""
import json
import sys

print("| scenario | nodes | rounds | violations | worst failover | median failover | stale writes rejected | accepted writes | reproduce |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            worst = "-" if r["worst_failover_ms"] is None else f'{r["worst_failover_ms"]} ms'
            median = "-" if r["median_failover_ms"] is None else f'{r["median_failover_ms"]} ms'
            v = r["findings"]
            if not r["in_model"]:
                v = f"{v} (beyond the model: observer {r['observer_violations']}, fencing {r['fencing_out_of_order'] + r['fencing_shared_tokens']})"
            tls = " --peer-tls" if r.get("peer_tls") else ""
            cmd = (f"`leasehold-chaos --scenario {r['scenario']} --nodes {r['nodes']} "
                   f"--rounds {r['rounds']} --seed {r['seed']}{tls}`")
            print(f"| {r['scenario']} | {r['nodes']} | {r['rounds']} | {v} | {worst} | {median} | "
                  f"{r['stale_writes_rejected']} | {r['accepted_writes']} | {cmd} |")
