#!/usr/bin/env python3
"""Renders bench-cluster.jsonl (scripts/bench-cluster) as markdown tables:
medians over rounds (min-max when there were several)."""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]


def cell(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return "-"
    f = lambda v: f"{v:,.2f}" if isinstance(v, float) and v < 100 else f"{round(v):,}"
    m = statistics.median(vals)
    return f(m) if len(vals) == 1 else f"{f(m)} ({f(min(vals))}-{f(max(vals))})"


pair = defaultdict(list)
for r in rows:
    if r.get("part") == "pair":
        pair[(r["workload"], r["server"])].append(r)
if pair:
    keys = ["per_cpu_s", "rate_per_s", "p50_us", "p99_us", "server_cpu_s", "lost", "errors", "misdelivered"]
    print("| workload | server | runs | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 3) + "|")
    for (w, s), runs in sorted(pair.items()):
        print(f"| {w} | {s} | {len(runs)} | " + " | ".join(cell(runs, k) for k in keys) + " |")
    print()

by = defaultdict(list)
for r in rows:
    if r.get("part") == "bytes":
        by[(r["server"], r["processes"])].append(r)
if by:
    keys = ["delivered", "per_cpu_s", "p99_us", "nats_bytes_per_delivery", "idle_process_bytes", "idle_process_cpu_s"]
    print("| server | processes with members | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for (s, n), runs in sorted(by.items()):
        print(f"| {s} | {n} | " + " | ".join(cell(runs, k) for k in keys) + " |")
