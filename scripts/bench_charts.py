#!/usr/bin/env python3
"""Draws bench-results.jsonl as SVG charts (standard library only), ours
beside the Go server's, medians over rounds:

  PREFIX-latency.svg   p50 and p99 latency per workload (log scale)
  PREFIX-cpu.svg       server CPU per delivered message per workload
  PREFIX-memory.svg    resident memory per idle session by count

usage: bench_charts.py RESULTS.jsonl PREFIX
"""
import json
import math
import statistics
import sys
from collections import defaultdict
from xml.sax.saxutils import escape

COLORS = {"rust": ("#1f6feb", "#8cb4f5"), "go": ("#d1761c", "#f0bf8f")}
LATENCY_ORDER = ["handshake", "connect", "p2p", "p2p-rate", "p2p-rate20k",
                 "p2p-sat", "room", "room-few", "call-setup"]


def load(path):
    by = defaultdict(lambda: defaultdict(list))
    servers = []
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        by[r["variant"]][r["server"]].append(r)
        if r["server"] not in servers:
            servers.append(r["server"])
    return by, servers


def value(r, key):
    if key == "cpu_us_per_delivery" and r.get(key) is None and r.get("server_cpu_s") is not None \
            and r.get("delivered"):
        return r["server_cpu_s"] * 1e6 / r["delivered"]
    return r.get(key)


def median(runs, key):
    vals = [v for v in (value(r, key) for r in runs) if v is not None]
    return statistics.median(vals) if vals else None


def color(server, light=False):
    pair = COLORS["go"] if server.startswith("go") else COLORS["rust"]
    if server == "floor":
        pair = ("#6e7781", "#afb8c1")  # the floor relay (scripts/bench)
    if server.startswith("rust") and server not in ("rust",):
        pair = ("#2da44e", "#95d5a5")  # a second build of ours
    return pair[1 if light else 0]


def fmt(v, unit):
    if unit == " µs" and v >= 1000:
        return fmt(v / 1000, " ms")
    if v >= 10000:
        s = f"{v / 1000:,.0f}k"
    elif v >= 100:
        s = f"{v:,.0f}"
    else:
        s = f"{v:.1f}"
    return s + unit


def bars(title, note, rows, unit, log, path):
    """Horizontal grouped bars. rows: [(label, [(series, value, color)])]."""
    bar_h, gap, left, width = 13, 12, 150, 520
    height = 60 + sum(len(s) * bar_h + gap for _, s in rows) + 40
    vals = [v for _, s in rows for _, v, _ in s if v]
    if not vals:
        return
    hi = max(vals)
    lo = min(vals)
    if log:
        lo_e = math.floor(math.log10(max(lo, 1e-9)))
        hi_e = math.ceil(math.log10(hi))
        hi_e = max(hi_e, lo_e + 1)

        def x(v):
            return (math.log10(max(v, 10 ** lo_e)) - lo_e) / (hi_e - lo_e) * width
        ticks = [10 ** e for e in range(lo_e, hi_e + 1)]
    else:
        step = 10 ** math.floor(math.log10(hi))
        top = math.ceil(hi / step) * step

        def x(v):
            return v / top * width
        ticks = [i * step for i in range(int(top / step) + 1)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" '
           f'height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<text x="10" y="34" fill="#555">{escape(note)}</text>']
    y = 50
    for t in ticks:
        tx = left + x(t)
        out.append(f'<line x1="{tx:.1f}" y1="{y - 4}" x2="{tx:.1f}" y2="{height - 36}" stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{height - 22}" text-anchor="middle" fill="#555">{fmt(t, unit)}</text>')
    legend = []
    for label, series in rows:
        out.append(f'<text x="{left - 8}" y="{y + len(series) * bar_h / 2 + 4:.1f}" '
                   f'text-anchor="end">{escape(label)}</text>')
        for name, v, c in series:
            if (name, c) not in legend:
                legend.append((name, c))
            if v is not None:
                w = max(x(v), 1)
                out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{c}"/>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" fill="#333">{fmt(v, unit)}</text>')
            y += bar_h
        y += gap
    lx = 10
    for name, c in legend:
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{c}"/>')
        out.append(f'<text x="{lx + 14}" y="{height - 5}">{escape(name)}</text>')
        lx += 16 + 7 * len(name)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {path}")


def main():
    by, servers = load(sys.argv[1])
    prefix = sys.argv[2]
    counts = sorted({max((r.get("round", 1) for rs in v.values() for r in rs), default=1)
                     for v in by.values()})
    rounds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    note = f"this machine (2 cores), default configs, median of {rounds} round(s); shorter is better"
    latency = []
    cpu = []
    for w in LATENCY_ORDER + sorted(set(by) - set(LATENCY_ORDER)):
        if w not in by or w.startswith("idle"):
            continue
        series = []
        for s in servers:
            series.append((f"{s} p50", median(by[w].get(s, []), "p50_us"), color(s, True)))
            series.append((f"{s} p99", median(by[w].get(s, []), "p99_us"), color(s)))
        latency.append((w, series))
        c = [(s, median(by[w].get(s, []), "cpu_us_per_delivery"), color(s)) for s in servers]
        if w not in ("connect", "handshake") and any(v for _, v, _ in c):
            cpu.append((w, c))
    bars("Latency per workload (p50 light, p99 dark)", note, latency, " µs", True,
         f"{prefix}-latency.svg")
    bars("Server CPU per delivered message", note, cpu, " µs", True, f"{prefix}-cpu.svg")
    memory = []
    idle = [w for w in by if w.startswith("idle")]
    def split(w):
        name, _, n = w.rpartition("-")
        return (name, int(n)) if n.isdigit() else (w, 0)
    idle.sort(key=split)
    for w in idle:
        name, n = split(w)
        if not n:
            label = w
        elif name.startswith("idle-room"):
            label = f"{n:,} in rooms of {name[len('idle-room'):]}"
        else:
            label = f"{n:,}, no room"
        series = []
        for s in servers:
            v = median(by[w].get(s, []), "rss_per_session_bytes")
            series.append((s, v / 1000 if v is not None else None, color(s)))
        memory.append((label, series))
    bars("Resident memory per idle session", note.replace("shorter", "less"), memory, " KB", False,
         f"{prefix}-memory.svg")


if __name__ == "__main__":
    main()
