#!/usr/bin/env python3
"""Fault injection: kill training runs at seeded random steps, resume each time, and
check that the final result equals an uninterrupted run's to the last digit.

Three loops, all on generated Criteo-format data:

1. `mpirun -np 2`: SIGKILL rank 1 when the run's metrics log reaches each of --kills
   random steps; mpirun then ends the job; `--resume <run folder>` goes on from the
   newest complete checkpoint (every 20 steps).
2. the same under mpirun with the tables in the file tier (`embedding.storage`), and in
   one process (where the file tier also reads a step ahead on another thread);
3. one process with a checkpoint every step and large tables, so most of its time is
   spent writing checkpoints: SIGKILL at --kills random steps (counting the kills that
   left an unfinished checkpoint behind), resume each time.

The final summary's AUC, logloss, steps and samples seen must equal the uninterrupted
run's exactly. Figures go to docs/benchmarks.md. Usage:

    python3 launch/kill_resume.py [--kills 10] [--seed 1] [--work DIR]
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "shardrec"
COMPARED = ("auc", "logloss", "steps", "samples_seen", "rows_test")


def config(work, name, extra, embedding):
    """A DLRM config over the generated data, writing its run into work/name."""
    text = f"""seed = 7
[data]
format = "criteo"
train = "{work / 'synth.tsv'}"
cache_dir = "{work / 'cache'}"
split = {{ kind = "tail", test = 0.2 }}
[embedding]
optimizer = {{ kind = "adagrad", lr = 0.05 }}
{embedding}
[model]
kind = "dlrm"
bottom = [32, 16]
top = [32, 16]
[train]
batch_size = 256
threads = 1
log_every = 1
save_model = false
{extra}
"""
    path = work / f"{name}.toml"
    path.write_text(text)
    return path


def command(ranks, cfg, run, resume):
    cmd = [str(BIN), "train", str(cfg), "--set", f'train.run_dir="{run}"']
    if resume:
        cmd += ["--resume", str(run)]
    return (["mpirun", "-np", str(ranks)] if ranks > 1 else []) + cmd


def finish(ranks, cfg, run, resume):
    """Runs to the end; the summary (the last stdout line)."""
    out = subprocess.run(
        command(ranks, cfg, run, resume), capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def logged_step(metrics, offset):
    """The newest step in metrics.jsonl past byte `offset` (this launch's lines)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError):
            continue
    return None


def rank_pid(stderr_path, rank, ranks):
    """The pid rank `rank` reports in its log (`rank R of N: pid P on host`)."""
    text = Path(stderr_path).read_text(errors="replace")
    for line in text.splitlines():
        head = f"rank {rank} of {ranks}: pid "
        if head in line:
            return int(line.split(head)[1].split()[0])
    return None


def kill_at(ranks, cfg, run, resume, step, work):
    """Starts a run and SIGKILLs it (rank 1 under mpirun) once it logs `step`; returns
    the step it had logged when killed, and the seconds the job took to end after."""
    metrics = run / "metrics.jsonl"
    offset = metrics.stat().st_size if metrics.exists() else 0
    err_path = work / "stderr.txt"
    with open(err_path, "w") as err:
        job = subprocess.Popen(
            command(ranks, cfg, run, resume), stdout=subprocess.DEVNULL, stderr=err
        )
    started = time.time()
    while True:
        seen = logged_step(metrics, offset)
        pid = job.pid if ranks == 1 else rank_pid(err_path, 1, ranks)
        if seen is not None and seen >= step and pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed = time.time()
            break
        if job.poll() is not None:
            sys.exit(f"the run ended before step {step}:\n{err_path.read_text()[-3000:]}")
        if time.time() - started > 600:
            job.kill()
            sys.exit(f"step {step} not reached in 600 s")
        time.sleep(0.002)
    code = job.wait(timeout=60)
    if code == 0:
        sys.exit("a killed job exited 0")
    return seen, time.time() - killed


def unfinished(run):
    """Checkpoint folders whose writing did not finish (no manifest)."""
    ckpts = run / "checkpoints"
    if not ckpts.is_dir():
        return []
    return [p.name for p in ckpts.iterdir() if not (p / "manifest.json").is_file()]


def loop(name, ranks, every, kills, rng, work, embedding="", epochs=3):
    """Kills at random steps after the first checkpoint (`every` steps), resuming each time."""
    cfg = config(work, name, f"epochs = {epochs}\ncheckpoint_every = {every}", embedding)
    whole = finish(ranks, cfg, work / f"{name}-whole", False)
    total = whole["steps"]
    steps = sorted(rng.sample(range(every + 1, total - 5), kills))
    run = work / f"{name}-killed"
    print(f"\n{name}: uninterrupted run {total} steps, auc {whole['auc']!r}")
    print("kill  at step  logged  ended after  newest checkpoint  unfinished")
    partial_kills = 0
    for i, step in enumerate(steps):
        seen, took = kill_at(ranks, cfg, run, i > 0, step, work)
        left = sorted((run / "checkpoints").iterdir()) if (run / "checkpoints").is_dir() else []
        done = [p.name for p in left if (p / "manifest.json").is_file()]
        partial = unfinished(run)
        partial_kills += bool(partial)
        print(
            f"{i + 1:>4}  {step:>7}  {seen:>6}  {took:>9.2f} s  "
            f"{done[-1] if done else '-':>17}  {','.join(partial) or '-'}"
        )
    resumed = finish(ranks, cfg, run, True)
    same = {k: (whole.get(k), resumed.get(k)) for k in COMPARED}
    print(f"resumed to the end from {resumed.get('resumed_from')}")
    for k, (a, b) in same.items():
        print(f"  {k}: uninterrupted {a!r}  killed {kills}x and resumed {b!r}  {'same' if a == b else 'DIFFERENT'}")
    print(f"  kills that left an unfinished checkpoint: {partial_kills} of {kills}")
    tier = work / "tier"
    if "storage" in embedding and tier.is_dir():
        print(f"  file-tier files left after the last run: {len(list(tier.iterdir()))}")
    return all(a == b for a, b in same.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: build with cargo build --release first")
    work = a.work or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(BIN), "synth", "--rows", "40000", "--cardinality", "500", "--out", str(work / "synth.tsv")],
        check=True, capture_output=True,
    )
    rng = random.Random(a.seed)
    started = time.time()
    ok = loop("np2", 2, 20, a.kills, rng, work)
    # the same job with its tables in the file tier (a cache of about 2% of the rows): the
    # rows in the files after the checkpoint are not trusted; resume rebuilds them
    tier = f'storage = {{ kind = "file", dir = "{work / "tier"}", cache_bytes = 200000 }}'
    ok &= loop("np2-file-tier", 2, 20, a.kills, rng, work, tier)
    # one process: the file tier with its prefetch thread reading a step ahead
    ok &= loop("np1-file-tier", 1, 20, a.kills, rng, work, tier)
    # big tables and a checkpoint every step: kills land mostly inside checkpoint writes
    hashed = 'kind = "hashed"\nbuckets = 20000'
    ok &= loop("np1-writes", 1, 1, a.kills, rng, work, hashed, epochs=1)
    print(f"\nseed {a.seed}, {a.kills} kills per loop, {time.time() - started:.0f} s in all; work in {work}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
