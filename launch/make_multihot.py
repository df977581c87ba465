#!/usr/bin/env python3
"""Writes the embedding-heavy benchmark's rows (issue 21): a label, 13 dense integers,
26 single-valued ids and 8 multi-valued bags of about 20 ids ("a|b|c"), every id drawn
from 10^6 values along a Zipf-like law, as delimited TSV: TRAIN and TEST files.

    usage: make_multihot.py OUT_PREFIX ROWS [TEST_FRACTION]
"""
import sys

import numpy as np


def main(prefix, rows, test_fraction=0.2):
    rng = np.random.default_rng(21)
    card, nd, ns, nm = 10**6, 13, 26, 8

    def ids(size):
        # a heavy head and a long tail over 10^6 values
        return np.minimum((rng.pareto(0.8, size) * 2000).astype(np.int64), card - 1)

    weights = rng.normal(0, 1, card).astype(np.float32)
    n_test = int(rows * test_fraction)
    for name, lo, hi in [("train", 0, rows - n_test), ("test", rows - n_test, rows)]:
        n = hi - lo
        dense = rng.poisson(5, (n, nd))
        single = ids((n, ns))
        lengths = np.clip(rng.poisson(20, (n, nm)), 1, None)
        bags = ids(int(lengths.sum()))
        logit = weights[single].sum(1) * 0.15 - 1.0
        with open(f"{prefix}-{name}.tsv", "w") as f:
            at = 0
            for r in range(n):
                cells = []
                bag_logit = 0.0
                for j in range(nm):
                    bag = bags[at:at + lengths[r, j]]
                    at += lengths[r, j]
                    bag_logit += float(weights[bag].mean()) * 0.3
                    cells.append("|".join(map(str, bag)))
                y = int(rng.random() < 1 / (1 + np.exp(-(logit[r] + bag_logit))))
                f.write("\t".join([str(y), *map(str, dense[r]), *map(str, single[r]), *cells]) + "\n")
        print(f"{prefix}-{name}.tsv: {n} rows")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.2)
