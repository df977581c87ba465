#!/usr/bin/env python3
"""Dynamic tables (issue 19) on a drifting generated stream: day-by-day progressive AUC of
dynamic tables against vocabulary `plain` tables (vocabulary over every training day), a
25% capacity with eviction against `hashed` tables of the same rows, `min_count = 2`
admission, RSS per day, and the lookup + sparse-update time per step.

    python3 launch/bench_dynamic.py [--days 10] [--rows-per-day 100000] [--seeds 3]
        [--np 1] [--turnover 0.1] [--drift 0.1] [--only NAME,...] [--out data/bench/dynamic]
        [--set KEY=VALUE ...]

Runs (`--only`, default the first eight): plain, dynamic, dynfull, cap25, hashed25, min2,
cap25min2, cap25lfu, cap25lfumin2 (LFU eviction with `min_count = 2`), and a `...learned`
twin of each capped or admitting run (`embedding.dynamic.default = "learned"`);
hashed25map and hashed25mapsketch: hashed tables of cap25's whole bytes (rows, key map,
and for the min_count runs the sketch).

Needs the release binary (`launch/setup.sh`). Prints one JSON line per run and a table;
figures go to docs/benchmarks.md by hand.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SHARDREC_BIN", os.path.join(ROOT, "target", "release", "shardrec"))

BASE = """seed = {seed}
[data]
format = "criteo"
train = {train}
test = "{test}"
dense_transform = "log1p"
cache_dir = "{cache}"
[embedding]
dim = 16
kind = "{kind}"
buckets = {buckets}
optimizer = {{ kind = "adagrad", lr = 0.01, eps = 1e-8 }}
{extra}
[model]
kind = "dlrm"
bottom = [128, 64]
top = [128, 64]
[optimizer]
kind = "adam"
lr = 0.001
[train]
mode = "stream"
batch_size = 1024
save_model = false
run_dir = "{run}"
"""


SKETCH_BYTES = 1048576
MIN2 = f"admit = {{ min_count = 2, sketch_bytes = {SKETCH_BYTES} }}"
ROW_BYTES = 128
MAP_BYTES_PER_ROW = 85
LFU = 'evict = "lfu"'
LEARNED = 'default = "learned"'


def dynamic(tables, *keys):
    """A dynamic run's extra TOML: its tables and its [embedding.dynamic] keys."""
    section = "\n[embedding.dynamic]\n" + "\n".join(keys) if keys else ""
    return ("dynamic", 0, tables + section)


def named_runs(cap_tables, full_tables):
    """Every run by name: (table kind, buckets, extra TOML). Each dynamic run but the
    uncapped ones has a `...learned` twin whose keys without a row read a learned
    default row."""
    keyed = {
        "cap25": (cap_tables,),
        "cap25min2": (cap_tables, MIN2),
        "cap25lfu": (cap_tables, LFU),
        "cap25lfumin2": (cap_tables, MIN2, LFU),
        "min2": ("", MIN2),
    }
    runs = {
        "plain": ("plain", 0, ""),
        "dynamic": dynamic(""),
        "dynfull": dynamic(full_tables),
        "hashed25": ("hashed", 1, cap_tables),
    }
    for name, (tables, *keys) in keyed.items():
        runs[name] = dynamic(tables, *keys)
        runs[name + "learned"] = dynamic(tables, *keys, LEARNED)
    return runs


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def make_days(a):
    first = os.path.join(a.out, "s-day00.tsv")
    if not os.path.exists(first):
        os.makedirs(a.out, exist_ok=True)
        sh([BIN, "synth", "--rows", str(a.days * a.rows_per_day), "--days", str(a.days),
            "--turnover", str(a.turnover), "--effect-drift", str(a.drift),
            "--cardinality", "100000",
            "--seed", "2026", "--out", os.path.join(a.out, "s.tsv")])
    files = [os.path.join(a.out, f"s-day{d:02d}.tsv") for d in range(a.days)]
    return files[:-1], files[-1]


def distinct_per_field(files):
    """Distinct ids of each categorical field over the training days."""
    seen = [set() for _ in range(26)]
    for f in files:
        with open(f) as fh:
            for line in fh:
                cols = line.rstrip("\n").split("\t")[14:]
                for i, v in enumerate(cols):
                    if v:
                        seen[i].add(v)
    return [len(s) for s in seen]


def run(a, name, seed, kind, buckets=0, extra=""):
    train, test = a.train_files, a.test_file
    rundir = os.path.join(a.out, "runs", f"{name}-s{seed}-np{a.np}")
    subprocess.run(["rm", "-rf", rundir])
    cfg = os.path.join(a.out, f"{name}-s{seed}.toml")
    with open(cfg, "w") as fh:
        fh.write(BASE.format(seed=seed, train=json.dumps(train), test=test,
                             cache=os.path.join(a.out, "cache"), kind=kind,
                             buckets=buckets, extra=extra, run=rundir))
    cmd = [BIN, "train", cfg] + [x for kv in a.set for x in ("--set", kv)]
    if a.np > 1:
        cmd = ["mpirun", "-np", str(a.np)] + cmd
    sh(cmd, cwd=ROOT)
    with open(os.path.join(rundir, "summary.json")) as fh:
        s = json.load(fh)
    t = s["time"]
    dyn = s.get("dynamic_tables", [])
    row = {
        "run": name, "seed": seed, "np": a.np, "test_auc": s["auc"],
        "days": [round(d["progressive_auc"], 5) for d in s.get("days", [])],
        "rss_mib": [round(d["rss_bytes"] / 2**20) for d in s.get("days", [])],
        "anon_rss_mib": [round(d["anon_rss_bytes"] / 2**20) for d in s.get("days", [])],
        "peak_rss_mib": round(s["peak_rss_bytes"] / 2**20),
        "steps": s["steps"],
        "lookup_ms_per_step": 1000 * t["lookup_s"] / s["steps"],
        "key_mapping_ms_per_step": 1000 * t.get("key_mapping_s", 0.0) / s["steps"],
        "update_ms_per_step": 1000 * t["sparse_update_s"] / s["steps"],
        "admitted": sum(d["admitted"] for d in dyn),
        "live_keys": sum(d["live_keys"] for d in dyn),
        "refused": sum(d["refused"] for d in dyn),
        "evicted": sum(d["evicted"] for d in dyn),
        "sketch_bytes": sum(d["sketch_bytes"] for d in dyn),
        "samples_per_s": s["train_samples_per_s"],
    }
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--rows-per-day", type=int, default=100000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--np", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run, e.g. sharding.strategy=row_wise")
    p.add_argument("--turnover", type=float, default=0.1)
    p.add_argument("--drift", type=float, default=0.1)
    p.add_argument("--only",
                   default="plain,dynamic,dynfull,cap25,hashed25,min2,cap25min2,cap25lfu")
    p.add_argument("--out", default=os.path.join(ROOT, "data", "bench", "dynamic"))
    a = p.parse_args()
    a.train_files, a.test_file = make_days(a)
    only = a.only.split(",")
    distinct = distinct_per_field(a.train_files)
    print(json.dumps({"distinct_ids_per_field": distinct, "total": sum(distinct)}), flush=True)
    def tables(rows):
        return "\n".join(
            f'[[embedding.tables]]\nname = "C{i + 1}"\nfeatures = ["C{i + 1}"]\nbuckets = {q}'
            for i, q in enumerate(rows))
    cap_rows = [max(a.np, d // 4) for d in distinct]
    cap_tables = tables(cap_rows)
    # hashed tables of the dynamic ones' whole bytes: a row is 128 bytes (16 floats and
    # their Adagrad accumulators), the key map adds at most 85 bytes a row, and min_count's
    # sketch 1 MiB a table
    def same_bytes(extra_bytes):
        return tables([r + (r * MAP_BYTES_PER_ROW + extra_bytes) // ROW_BYTES for r in cap_rows])
    # every distinct id, the memory reserved at start as a plain table's
    full_tables = tables(distinct)
    runs = named_runs(cap_tables, full_tables)
    runs["hashed25map"] = ("hashed", 1, same_bytes(0))
    runs["hashed25mapsketch"] = ("hashed", 1, same_bytes(SKETCH_BYTES))
    unknown = [n for n in only if n not in runs]
    if unknown:
        p.error(f"--only: unknown runs {unknown}; known: {', '.join(runs)}")
    rows = []
    for seed in range(1, a.seeds + 1):
        for name in only:
            kind, buckets, extra = runs[name]
            rows.append(run(a, name, seed, kind, buckets=buckets, extra=extra))
    by = {}
    for r in rows:
        by.setdefault(r["run"], []).append(r["test_auc"])
    for k, v in by.items():
        print(f"{k}: mean test AUC {sum(v) / len(v):.5f} over {len(v)} seed(s): {v}")


if __name__ == "__main__":
    sys.exit(main())
