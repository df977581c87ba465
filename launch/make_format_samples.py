#!/usr/bin/env python3
"""Writes the same rows as TSV, as Parquet (pyarrow) and as TorchRec-style npy (numpy),
for the test that all three train to the same AUC (tests/data_formats.rs).

    python3 -m venv /tmp/fmt && /tmp/fmt/bin/pip install pyarrow numpy
    /tmp/fmt/bin/python launch/make_format_samples.py tests/data/formats

Rows: a label, dense columns I1..I4 (integers, some missing) and categorical columns
C1..C6 (integers; C6 has missing cells), plus `tags`, a multi-valued column (TSV
"a|b|c", Parquet list<int64>), which the npy files cannot hold.

TorchRec's npy files hold ids, not values. So that a vocabulary built from the TSV gives
the same ids, each categorical value's training count is distinct within its column:
shardrec numbers values 1..n by decreasing training count (ties would be broken by a
hash only shardrec computes), and maps values never seen in training to 0. The npy
sparse ids are exactly those numbers; `num_embeddings_per_feature` is n + 1 per
column (written to sizes.txt). Missing dense values are empty TSV cells, Parquet
nulls and npy zeros, which all three read as 0; the npy dense values are the raw
integers as float32 (configs set the same dense_transform on every side).
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_TRAIN, N_TEST, DENSE, CATS = 2400, 600, 4, 6
rng = np.random.default_rng(20261201)


def distinct_counts(total):
    """Counts 1, 2, ..., k with the remainder on the largest: all distinct, sum total."""
    k = int((np.sqrt(8 * total + 1) - 1) / 2)
    counts = list(range(1, k + 1))
    counts[-1] += total - sum(counts)
    return counts


def categorical_column(missing):
    counts = distinct_counts(N_TRAIN)
    values = [str(v) for v in rng.choice(10**9, size=len(counts), replace=False)]
    if missing:
        values[len(values) // 2] = ""  # one value is "missing": its own count, its own id
    train = np.repeat(np.array(values, dtype=object), counts)
    rng.shuffle(train)
    unseen = [str(10**9 + i) for i in range(40)]
    test = np.where(
        rng.random(N_TEST) < 0.9,
        rng.choice(np.array(values, dtype=object), N_TEST),
        rng.choice(np.array(unseen, dtype=object), N_TEST),
    )
    # ids: decreasing training count, 1-based; unseen values 0
    order = sorted(range(len(values)), key=lambda i: -counts[i])
    ids = {values[i]: rank + 1 for rank, i in enumerate(order)}
    return train, test, ids, len(values) + 1


def main(out):
    os.makedirs(out, exist_ok=True)
    n = N_TRAIN + N_TEST
    dense = rng.poisson(lam=[2, 8, 30, 200], size=(n, DENSE)).astype(np.int64)
    dense_missing = rng.random((n, DENSE)) < 0.05
    cats, ids, sizes = [], [], []
    for c in range(CATS):
        train, test, c_ids, size = categorical_column(missing=(c == CATS - 1))
        cats.append(np.concatenate([train, test]))
        ids.append(c_ids)
        sizes.append(size)
    tags = [list(rng.choice(50, size=rng.integers(0, 4), replace=False)) for _ in range(n)]
    # labels from a logistic model of a few features, so the AUC means something
    effect = {c: {v: rng.normal(0, 0.8) for v in ids[c]} for c in range(CATS)}
    logit = -1.0 + 0.3 * np.log1p(np.where(dense_missing, 0, dense)[:, 1])
    for c in range(CATS):
        logit = logit + np.array([effect[c].get(v, 0.0) for v in cats[c]])
    logit = logit + np.array([0.2 * len(t) for t in tags])
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)

    def rows(lo, hi):
        return range(lo, hi)

    for name, lo, hi, day in [("train", 0, N_TRAIN, 0), ("test", N_TRAIN, n, 1)]:
        write_tsv(f"{out}/{name}.tsv", rows(lo, hi), label, dense, dense_missing, cats, tags)
        write_parquet(f"{out}/{name}.parquet", lo, hi, label, dense, dense_missing, cats, tags)
        write_npy(f"{out}/day_{day}", lo, hi, label, dense, dense_missing, cats, ids)
    with open(f"{out}/sizes.txt", "w") as f:
        f.write(", ".join(str(s) for s in sizes) + "\n")


def write_tsv(path, rows, label, dense, dense_missing, cats, tags):
    with open(path, "w") as f:
        for r in rows:
            cells = [str(label[r])]
            cells += ["" if dense_missing[r, j] else str(dense[r, j]) for j in range(DENSE)]
            cells += [cats[c][r] for c in range(CATS)]
            cells.append("|".join(str(t) for t in tags[r]))
            f.write("\t".join(cells) + "\n")


def write_parquet(path, lo, hi, label, dense, dense_missing, cats, tags):
    columns = {"label": pa.array(label[lo:hi], pa.int32())}
    for j in range(DENSE):
        col = dense[lo:hi, j]
        columns[f"I{j + 1}"] = pa.array(col, pa.int64(), mask=dense_missing[lo:hi, j])
    for c in range(CATS):
        vals = cats[c][lo:hi]
        if c == CATS - 1:  # strings, with nulls for the missing value
            columns[f"C{c + 1}"] = pa.array([v if v != "" else None for v in vals], pa.string())
        else:  # integers
            columns[f"C{c + 1}"] = pa.array([int(v) for v in vals], pa.int64())
    columns["tags"] = pa.array([[int(t) for t in ts] for ts in tags[lo:hi]], pa.list_(pa.int64()))
    # small row groups, so that reading crosses several
    pq.write_table(pa.table(columns), path, row_group_size=700)


def write_npy(stem, lo, hi, label, dense, dense_missing, cats, ids):
    d = np.where(dense_missing[lo:hi], 0, dense[lo:hi]).astype(np.float32)
    s = np.array([[ids[c].get(cats[c][r], 0) for c in range(CATS)] for r in range(lo, hi)], dtype=np.int64)
    np.save(f"{stem}_dense.npy", d)
    np.save(f"{stem}_sparse.npy", s)
    np.save(f"{stem}_labels.npy", label[lo:hi].reshape(-1, 1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/formats")
