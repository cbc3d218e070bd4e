#!/usr/bin/env python3
"""Renders bench-results.jsonl as a markdown table: one column per server
(median over rounds; the range when there were several), and the first
`rust*` server against the Go server."""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(lambda: defaultdict(list))
servers = []
for r in rows:
    by[r["variant"]][r["server"]].append(r)
    if r["server"] not in servers:
        servers.append(r["server"])

def get(r, key):
    if key.startswith("pair_done."):
        return (r.get("pair_done") or {}).get(key.split(".", 1)[1])
    return r.get(key)

def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and v < 10:
        return f"{v:,.2f}"
    if isinstance(v, float) and v < 100:
        return f"{v:,.1f}"
    return f"{round(v):,}"

def cell(runs, key):
    vals = [v for v in (get(r, key) for r in runs) if v is not None]
    if not vals:
        return None, "-"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return med, fmt(med)
    return med, f"{fmt(med)} ({fmt(min(vals))}-{fmt(max(vals))})"

METRICS = [
    ("rate /s", "rate_per_s", True),
    ("per server-CPU-s", "per_cpu_s", True),
    ("p50 µs", "p50_us", False),
    ("p99 µs", "p99_us", False),
    ("max µs", "max_us", False),
    ("server CPU µs per delivery", "cpu_us_per_delivery", False),
    ("server CPU s", "server_cpu_s", False),
    ("server cores", "server_cores", False),
    ("loadgen cores", "loadgen_cores", False),
    ("lost", "lost", False),
    ("errors", "errors", False),
]
CALL = [
    ("all pairs done µs", "pair_done.max_us", False),
    ("pair done p50 µs", "pair_done.p50_us", False),
    ("pairs done", "pairs_done", True),
]
IDLE = [("RSS per session B", "rss_per_session_bytes", False), ("server RSS KiB", "server_rss_kib", False), ("errors", "errors", False), ("clients", "clients", True)]

rust = next((s for s in servers if s.startswith("rust")), None)
go = next((s for s in servers if s.startswith("go")), None)
print("| workload | metric | " + " | ".join(servers) + f" | {rust} vs {go} |")
print("|---|---|" + "---|" * len(servers) + "---|")
for variant, per in by.items():
    metrics = IDLE if variant.startswith("idle") else (CALL + METRICS if variant == "call-setup" else METRICS)
    for name, key, hb in metrics:
        vals = {s: cell(per.get(s, []), key) for s in servers}
        a, b = vals.get(rust, (None,))[0], vals.get(go, (None,))[0]
        if a and b:
            ratio = f"{(a / b) if hb else (b / a):.2f}x"
        else:
            ratio = "-"
        print(f"| {variant} | {name} | " + " | ".join(vals[s][1] for s in servers) + f" | {ratio} |")
