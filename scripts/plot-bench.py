"""Draws failover time per trial from leasehold-bench's JSON.

Usage: python3 plot-bench.py BENCH_JSON OUT_PNG   (needs matplotlib)
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def main(src, out):
    with open(src) as f:
        b = json.load(f)
    d = b["distributions_ms"]
    ttl = b["lease_ttl_ms"]
    series = [
        ("failover", f"leasehold, lease {ttl} ms", "tab:blue", "o"),
        ("failover_etcd", f"plain etcd election, lease {ttl} ms", "tab:red", "s"),
        ("failover_on_etcd", f"leasehold on etcd, lease {ttl} ms", "tab:orange", "^"),
        ("failover_1s", "leasehold, lease 1000 ms", "tab:green", "D"),
        ("failover_min_ttl", f"leasehold, lease {b['min_ttl_ms']} ms", "tab:purple", "v"),
    ]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for key, label, color, marker in series:
        trials = d.get(key, {}).get("trials", [])
        if not trials:
            continue
        xs = list(range(1, len(trials) + 1))
        p50 = d[key]["p50"]
        ax.plot(xs, trials, marker=marker, linestyle="-", linewidth=0.8, color=color,
                label=f"{label} (median {p50:.0f} ms)")
        ax.axhline(p50, color=color, linewidth=0.6, linestyle=":")
    ax.axhline(ttl, color="gray", linewidth=0.8, linestyle="--", label=f"lease TTL {ttl} ms")
    ax.set_xlabel("trial (kill -9 of the leader)")
    ax.set_ylabel("time until the next leader holds the lease (ms)")
    ax.set_title("Unplanned failover per trial, on one machine in one run")
    ax.set_ylim(bottom=0)
    ax.grid(True, linewidth=0.3)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
