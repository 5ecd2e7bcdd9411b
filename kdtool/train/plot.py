"""Learning curves from lightning's CSV logs: training loss per step, validation loss per epoch."""
import csv
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(csv_dir):
    """Training loss by step and validation loss by epoch, over every run (a resumed run is a new
    csv/version_<n>; where runs overlap, the later one wins)."""
    train, valid = {}, {}
    versions = sorted(Path(csv_dir).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in versions:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    train[int(row["step"])] = float(row["train/loss"])
                if row.get("valid/loss"):
                    valid[int(row["epoch"]) + 1] = float(row["valid/loss"])
    return sorted(train.items()), sorted(valid.items())


def plot_learning_curve(csv_dir, out_png, title=""):
    train, valid = read_metrics(csv_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax2 = ax.twiny()  # epochs on top for the validation curve
    lines = []
    if train:
        lines += ax.plot(*zip(*train), color="tab:blue", alpha=0.6, label="train loss (per step)")
    if valid:
        lines += ax2.plot(*zip(*valid), color="tab:red", marker="o", label="valid loss (per epoch)")
    ax.set_xlabel("step")
    ax2.set_xlabel("epoch")
    ax.set_ylabel("loss (summed over tokens, per utterance)")
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(matplotlib.ticker.FormatStrFormatter("%g"))  # 40, not 4x10^1
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
