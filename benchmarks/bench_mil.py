"""`pathgen mil train` against torchmil's ABMIL: seconds per epoch and peak RSS on the same bags.

1,000 synthetic training bags of 2,000 x 384 float32 features (about 3 GB of feature files, written once to
$TMPDIR/pathgen-bench-mil by `pathgen.mil.synthetic`), plus 20 validation and 20 test bags. Both sides train
the same gated-attention ABMIL (384 -> 256 ReLU dropout 0.25, gated attention of width 128), one bag per step,
AdamW, bags read lazily from the h5 files by 2 DataLoader workers, fp32 on the CPU:

- pathgen: `train_mil(..., splits=<1000 train / 20 val / 20 test>)`, seconds per epoch from its log.jsonl
  (the training pass plus the validation pass);
- torchmil: `ProcessedMILDataset` over the same files, `torchmil.models.ABMIL(gated=True, feat_ext=...)`
  (its binary head) and `torchmil.utils.Trainer`, one `train(max_epochs=1)` per epoch (training + validation).

Each side runs in a fresh subprocess whose process tree's memory (workers included; proportional set size, so
pages shared between the main process and its forked workers count once) is sampled every 50 ms with psutil;
sides alternate over --rounds rounds and the medians are printed. Needs `pip install -e ".[bench]"`.

    python benchmarks/bench_mil.py
    python benchmarks/bench_mil.py --epochs 3 --rounds 3
    python benchmarks/bench_mil.py --train-bags 100      # a tenth of the epoch, same bags: a quicker look
"""

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_measured  # noqa: E402

N_TRAIN, N_VAL, N_TEST = 1000, 20, 20


def prepare(work: Path, n_instances: int, dim: int, n_train: int) -> tuple[Path, Path, Path]:
    """Feature files (written once, reused), and labels/splits of the first n_train training bags + val + test."""
    from pathgen.mil.synthetic import write_synthetic_bags

    labels = work / "labels.csv"
    if not labels.exists():
        write_synthetic_bags(work, n_bags=N_TRAIN + N_VAL + N_TEST, n_instances=n_instances, dim=dim, n_planted=20,
                             signal=2.0, seed=0)
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    rows = rows[:n_train] + rows[N_TRAIN:]  # the validation and test bags are the last 40 of the 1,040
    sub_labels, splits = work / f"labels_{n_train}.csv", work / f"splits_{n_train}.csv"
    with open(sub_labels, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(splits, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "fold", "split"])
        for i, row in enumerate(rows):
            writer.writerow([row["slide_id"], 0, "train" if i < n_train else "val" if i < n_train + N_VAL else "test"])
    return work / "features_synthetic", sub_labels, splits


PATHGEN = """
import json, sys
from pathgen.config import load_config
from pathgen.mil.config import MILConfig
from pathgen.mil.train import train_mil
features, labels, splits, out, epochs = sys.argv[1:6]
cfg = load_config(MILConfig, None, ["model.name=abmil", "model.hidden_dim=256", "model.attn_dim=128",
    "model.dropout=0.25", f"train.epochs={epochs}", "train.lr=2e-4", "train.num_workers=2", "train.patience=100",
    "metrics.bootstrap=0", "run.device=cpu", "run.precision=fp32"])
train_mil(features, labels, out, cfg, splits=splits, progress=False)
seconds = [json.loads(line)["seconds"] for line in open(f"{out}/logs/fold0/log.jsonl")]
print(json.dumps({"epoch_seconds": seconds}))
"""

TORCHMIL = """
import json, sys, time, csv
import h5py, numpy as np, torch
from torchmil.data import collate_fn
from torchmil.datasets import ProcessedMILDataset
from torchmil.models import ABMIL
from torchmil.utils import Trainer
features, labels, splits, out, epochs = sys.argv[1:6]
label_of = {r["slide_id"]: float(r["label"] == "positive") for r in csv.DictReader(open(labels))}
split_of = {r["slide_id"]: r["split"] for r in csv.DictReader(open(splits))}
def read(path, key):  # features from the feature files; bag labels from labels.csv
    name = path.rsplit("/", 1)[-1][:-3]
    if key == "labels":
        return np.array(label_of[name], np.float32)
    with h5py.File(path, "r") as f:
        return f[key][:]
def loader(split, shuffle):
    names = [s for s, k in split_of.items() if k == split]
    data = ProcessedMILDataset(features_path=features, labels_path=features, bag_names=names, bag_keys=["X", "Y"],
                               file_ext=".h5", read_file_fn=read, verbose=False)
    return torch.utils.data.DataLoader(data, batch_size=1, shuffle=shuffle, collate_fn=collate_fn, num_workers=2,
                                       persistent_workers=True)
torch.manual_seed(0)
feat_ext = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.ReLU(), torch.nn.Dropout(0.25))
model = ABMIL(in_shape=(384,), att_dim=128, gated=True, feat_ext=feat_ext)
model(torch.zeros(1, 2, 384))  # materialise torchmil's lazy layers before the optimiser sees them
opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
trainer = Trainer(model, opt, device="cpu", disable_pbar=True, verbose=False)
train, val = loader("train", True), loader("val", False)
seconds = []
for _ in range(int(epochs)):
    t0 = time.perf_counter()
    trainer.train(max_epochs=1, train_dataloader=train, val_dataloader=val)
    seconds.append(time.perf_counter() - t0)
print(json.dumps({"epoch_seconds": seconds}))
"""


def run_side(code: str, args: list[str]) -> tuple[list[float], float]:
    """(per-epoch seconds, peak memory of the process tree in GiB: the sum of PSS) of one fresh subprocess."""
    m = run_measured([sys.executable, "-c", code, *args], memory="pss", interval=0.05)
    return m.last_json()["epoch_seconds"], m.peak_gib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pathgen-bench-mil")
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-bags", type=int, default=N_TRAIN, help="train on the first N of the 1,000 bags")
    args = ap.parse_args()
    features, labels, splits = prepare(args.work, args.instances, args.dim, min(args.train_bags, N_TRAIN))
    sides = {"pathgen mil train": PATHGEN, "torchmil ABMIL + Trainer": TORCHMIL}
    results = {name: {"epoch": [], "rss": []} for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            seconds, rss = run_side(sides[name], [str(features), str(labels), str(splits),
                                                   str(args.work / f"out_{r}"), str(args.epochs)])
            # the first epoch pays for worker start-up and a cold page cache: report the later ones
            results[name]["epoch"].append(statistics.median(seconds[1:] or seconds))
            results[name]["rss"].append(rss)
            print(f"round {r}: {name}: epochs {', '.join(f'{s:.1f}' for s in seconds)} s, peak RSS {rss:.2f} GiB")
    n_train = min(args.train_bags, N_TRAIN)
    print(f"\n{n_train} training bags of {args.instances} x {args.dim} (+{N_VAL} validation), medians of "
          f"{args.rounds} rounds:")
    for name, res in results.items():
        print(f"  {name:28s} {statistics.median(res['epoch']):7.1f} s/epoch   peak RSS "
              f"{statistics.median(res['rss']):.2f} GiB")
    a, b = (statistics.median(results[n]["epoch"]) for n in sides)
    print(f"  ratio pathgen / torchmil seconds per epoch = {a / b:.2f}")


if __name__ == "__main__":
    main()
