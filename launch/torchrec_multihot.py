#!/usr/bin/env python3
"""TorchRec's DLRM with multi-hot features, the peer of launch/bench_multihot.sh.

../shared/peers/torchrec_dlrm.py reads one id per feature; this reads a delimited TSV of
`label, dense x ND, single-valued ids x NS, multi-valued "a|b|c" x NM` (as
launch/make_multihot.py writes it), numbers each feature's values seen in training
1..n (0 for unseen), and trains torchrec's DLRM over a FusedEmbeddingBagCollection
(FBGEMM's TBE, the sparse optimizer fused into backward; sum pooling) with Adam on the
dense part: the protocol of torchrec_dlrm.py. Batches are built before the clock starts,
as there; only the training steps are timed.

    usage: torchrec_multihot.py TRAIN.tsv --test TEST.tsv [--num-dense 13 --num-single 26
           --num-multi 8 --emb-dim 64 --batch-size 2048 --threads 2 ...]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peers")
sys.path.insert(0, PEERS)
import common  # noqa: E402

from torchrec import EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection  # noqa: E402


def read(path, nd, ns, nm):
    """Labels, log1p dense values, and per sparse feature (values, lengths) as arrays."""
    labels, dense = [], []
    values = [[] for _ in range(ns + nm)]
    lengths = [[] for _ in range(ns + nm)]
    with open(path) as f:
        for line in f:
            r = line.rstrip("\n").split("\t")
            labels.append(float(r[0]))
            dense.append([float(x) if x else 0.0 for x in r[1:1 + nd]])
            for j, cell in enumerate(r[1 + nd:1 + nd + ns + nm]):
                items = cell.split("|") if j >= ns else [cell]
                items = [x for x in items if x != ""] if j >= ns else items
                values[j].extend(items)
                lengths[j].append(len(items))
    y = (np.asarray(labels, np.float32) > 0).astype(np.float32)
    d = np.log1p(np.clip(np.asarray(dense, np.float32), 0, None)).astype(np.float32)
    feats = [(np.asarray(v, dtype=np.int64), np.asarray(n, dtype=np.int64)) for v, n in zip(values, lengths)]
    return y, d, feats


def number(train_feats, test_feats):
    """Each feature's training values as ids 1..n (test values unseen in training: 0)."""
    sizes, tr, te = [], [], []
    for (v, n), (vt, nt) in zip(train_feats, test_feats):
        uniq, ids = np.unique(v, return_inverse=True)
        pos = np.searchsorted(uniq, vt)
        pos = np.clip(pos, 0, max(len(uniq) - 1, 0))
        seen = (uniq[pos] == vt) if len(uniq) else np.zeros(len(vt), bool)
        tr.append((ids.astype(np.int64) + 1, n))
        te.append((np.where(seen, pos + 1, 0).astype(np.int64), nt))
        sizes.append(len(uniq) + 1)
    return sizes, tr, te


def batches(y, d, feats, keys, order, batch_size):
    """KJTs of the rows in `order`, batch by batch (feature-major values and lengths)."""
    starts = [np.concatenate([[0], np.cumsum(n)]) for _, n in feats]
    out = []
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        vals, lens = [], []
        for (v, n), s in zip(feats, starts):
            lens.append(n[rows])
            vals.append(np.concatenate([v[s[r]:s[r + 1]] for r in rows]) if len(rows) else v[:0])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.from_numpy(np.concatenate(vals)),
            lengths=torch.from_numpy(np.concatenate(lens)).int())
        out.append((torch.from_numpy(d[rows]), kjt, torch.from_numpy(y[rows])))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("train")
    p.add_argument("--test", required=True)
    p.add_argument("--num-dense", type=int, default=13)
    p.add_argument("--num-single", type=int, default=26)
    p.add_argument("--num-multi", type=int, default=8)
    p.add_argument("--emb-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--emb-lr", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bottom", default="512,256")
    p.add_argument("--top", default="512,256")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    nd, ns, nm = a.num_dense, a.num_single, a.num_multi
    t0 = time.time()
    y, d, feats = read(a.train, nd, ns, nm)
    yt, dt, feats_t = read(a.test, nd, ns, nm)
    sizes, tr, te = number(feats, feats_t)
    keys = [f"f{j}" for j in range(ns + nm)]
    print(f"[load] train={len(y)} test={len(yt)} tables={sizes} load_s={time.time() - t0:.1f}")
    tables = [EmbeddingBagConfig(name=f"t{j}", embedding_dim=a.emb_dim, num_embeddings=max(n, 2),
                                 feature_names=[k]) for j, (n, k) in enumerate(zip(sizes, keys))]
    ebc = FusedEmbeddingBagCollection(tables=tables, optimizer_type=torch.optim.Adagrad,
                                      optimizer_kwargs={"lr": a.emb_lr}, device=torch.device("cpu"))
    bottom = [int(x) for x in a.bottom.split(",")] + [a.emb_dim]
    top = [int(x) for x in a.top.split(",")] + [1]
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=nd,
                 dense_arch_layer_sizes=bottom, over_arch_layer_sizes=top)
    dense_params = [q for n, q in model.named_parameters() if "embedding_bag_collection" not in n]
    opt = torch.optim.Adam(dense_params, lr=a.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train = batches(y, d, tr, keys, np.random.default_rng(a.seed).permutation(len(y)), a.batch_size)
    model.train()
    n, t1 = 0, time.time()
    for dense, kjt, label in train:
        loss = loss_fn(model(dense, kjt).squeeze(-1), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += label.shape[0]
    train_s = time.time() - t1
    model.eval()
    with torch.no_grad():
        preds = [torch.sigmoid(model(dd, kk).squeeze(-1))
                 for dd, kk, _ in batches(yt, dt, te, keys, np.arange(len(yt)), 8192)]
    auc, ll = common.metrics(yt, torch.cat(preds).numpy())
    common.report("torchrec.DLRM.multihot", auc, ll, n, train_s,
                  f"emb={a.emb_dim} batch={a.batch_size} single={ns} multi={nm}")


if __name__ == "__main__":
    main()
