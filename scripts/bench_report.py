#!/usr/bin/env python3
"""Renders bench-results.jsonl as a markdown table with ours/Go ratios."""
import json, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(dict)
for r in rows:
    by[r["variant"]][r["server"]] = r

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"

def ratio(a, b, higher_better=True):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    return f"{(a / b) if higher_better else (b / a):.2f}x"

print("| workload | metric | rust | go 0.4.1 | rust vs go |")
print("|---|---|---|---|---|")
for variant, servers in by.items():
    rs, go = servers.get("rust"), servers.get("go-0.4.1")
    if not rs or not go:
        continue
    metrics = [
        ("rate /s", "rate_per_s", True),
        ("per server-CPU-s", "per_cpu_s", True),
        ("p50 µs", "p50_us", False),
        ("p99 µs", "p99_us", False),
        ("max µs", "max_us", False),
        ("server CPU s", "server_cpu_s", False),
        ("lost", "lost", False),
        ("errors", "errors", False),
    ]
    if variant == "idle":
        metrics = [("RSS per session B", "rss_per_session_bytes", False), ("errors", "errors", False), ("clients", "clients", True)]
    for name, key, hb in metrics:
        print(f"| {variant} | {name} | {fmt(rs.get(key))} | {fmt(go.get(key))} | {ratio(rs.get(key), go.get(key), hb)} |")
