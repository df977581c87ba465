"""Checks that shardrec's DLRM training computes what TorchRec's does.

shardrec trains DLRM on the Criteo sample without shuffling; TorchRec (fused
EmbeddingBagCollection, element-wise Adagrad on the tables, Adam on the dense part)
starts from shardrec's initial weights and trains on the same batches in the same order.
The two test AUCs and loglosses must agree to float precision.

    PY=$(bash ../shared/peers/setup.sh | tail -n 1)
    $PY launch/check_torchrec_equivalence.py [SEED]

Run from the repository root after `launch/setup.sh`.
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../shared/peers"))
import common  # noqa: E402  (the peers' reader and metrics)

from torchrec import EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection  # noqa: E402

SEED = int(sys.argv[1]) if len(sys.argv) > 1 else 1
DATA = "../shared/data/criteo/criteo_sample.tsv"
BIN = "target/release/shardrec"
WORK = "data/bench/equivalence"
F, D, B, EPOCHS = 26, 16, 1024, 3


def shardrec(run, *extra):
    out = subprocess.run([BIN, "train", "configs/criteo_dlrm.toml", "--set", f"seed={SEED}", "--set", "train.shuffle=false",
                          "--set", f"train.run_dir={run}", *extra], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    return {k: torch.from_numpy(np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                                              dtype=np.float32).copy()).view(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def read_vocab(path):
    b = open(path, "rb").read()
    pos = 8
    (nf,) = struct.unpack_from("<Q", b, pos)
    pos += 8
    feats = []
    for _ in range(nf):
        (n,) = struct.unpack_from("<Q", b, pos)
        pos += 8
        ids = {}
        for i in range(n):
            (ln,) = struct.unpack_from("<I", b, pos)
            pos += 4
            ids[b[pos:pos + ln].decode()] = i + 1
            pos += ln + 8
        feats.append(ids)
    return feats


def main():
    os.makedirs(WORK, exist_ok=True)
    # shardrec's initial weights: one step with vanishing learning rates
    init = f"{WORK}/init-{SEED}"
    shardrec(init, "--set", "train.max_steps=1", "--set", "optimizer.lr=1e-30", "--set", "embedding.optimizer.lr=1e-30")
    ours = shardrec(f"{WORK}/trained-{SEED}", "--set", "train.save_model=false")

    man = json.load(open(f"{init}/model/manifest.json"))
    sizes = man["vocab_sizes"]
    vocab = read_vocab(f"{init}/model/vocab.bin")
    dense = read_safetensors(f"{init}/model/dense.safetensors")
    y, d, s = common.read_tsv(DATA, 13, F)
    cut = int(round(len(y) * 0.8))
    ids = np.array([[vocab[j].get(r[j], 0) for j in range(F)] for r in s], dtype=np.int64)

    tables = [EmbeddingBagConfig(name=f"t_{j}", embedding_dim=D, num_embeddings=sizes[j], feature_names=[f"C{j + 1}"])
              for j in range(F)]
    ebc = FusedEmbeddingBagCollection(tables=tables, optimizer_type=torch.optim.Adagrad,
                                      optimizer_kwargs={"lr": 0.01, "eps": 1e-8}, device=torch.device("cpu"))
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=13, dense_arch_layer_sizes=[512, 256, D],
                 over_arch_layer_sizes=[512, 256, 1])
    sd = model.state_dict()
    table_key = [k for k in sd if "t_0" in k][0].replace("t_0", "t_{}")
    for j in range(F):
        w = np.fromfile(f"{init}/model/tables/main_{j}.f32", dtype=np.float32).reshape(sizes[j], D)
        sd[table_key.format(j)] = torch.from_numpy(w)
    names = {"dense_arch.model._mlp.0._linear": "bottom.linear0", "dense_arch.model._mlp.1._linear": "bottom.linear1",
             "dense_arch.model._mlp.2._linear": "bottom.linear2", "over_arch.model.0._mlp.0._linear": "top.linear0",
             "over_arch.model.0._mlp.1._linear": "top.linear1", "over_arch.model.1": "top.out"}
    for theirs, mine in names.items():
        for p in ["weight", "bias"]:
            sd[f"{theirs}.{p}"] = dense[f"{mine}.{p}"]
    # shardrec orders the pairwise dot products as the strictly lower triangle (i > j),
    # TorchRec as the upper one (i < j): permute the top MLP's input columns
    n = F + 1
    lower = {p: k for k, p in enumerate((i, j) for i in range(n) for j in range(i))}
    perm = list(range(D)) + [D + lower[(j, i)] for i in range(n) for j in range(i + 1, n)]
    key = "over_arch.model.0._mlp.0._linear.weight"
    sd[key] = sd[key][:, perm]
    model.load_state_dict(sd)

    keys = [f"C{j + 1}" for j in range(F)]

    def kjt(a):
        a = torch.from_numpy(a)
        return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=a.t().contiguous().view(-1),
                                                   lengths=torch.ones(a.shape[0] * F, dtype=torch.int32))

    opt = torch.optim.Adam([p for k, p in model.named_parameters() if "embedding_bag_collection" not in k], lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(EPOCHS):
        for i in range(0, cut, B):
            j = min(i + B, cut)
            loss = loss_fn(model(torch.from_numpy(d[i:j]), kjt(ids[i:j])).squeeze(-1), torch.from_numpy(y[i:j]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(d[cut:]), kjt(ids[cut:])).squeeze(-1)).numpy()
    auc, ll = common.metrics(y[cut:], p)
    print(f"seed {SEED}: shardrec test AUC {ours['auc']:.6f} logloss {ours['logloss']:.6f} | "
          f"TorchRec from the same init and order: AUC {auc:.6f} logloss {ll:.6f}")
    ok = abs(auc - ours["auc"]) < 1e-4 and abs(ll - ours["logloss"]) < 1e-4
    print("equivalent" if ok else "NOT equivalent")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
