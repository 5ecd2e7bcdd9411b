"""Learning curves from lightning's CSV logs: training loss per step, validation loss per epoch."""
import csv
from pathlib import Path

import matplotlib

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
    fig, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twiny()  # epochs on top for the validation curve
    if train:
        ax.plot(*zip(*train), color="tab:blue", alpha=0.6, label="train loss (per step)")
    if valid:
        ax2.plot(*zip(*valid), color="tab:red", marker="o", label="valid loss (per epoch)")
    ax.set_xlabel("step")
    ax2.set_xlabel("epoch")
    ax.set_ylabel("loss (sum over tokens / utterance)")
    ax.set_yscale("log")
    fig.legend(loc="upper right")
    ax.set_title(title, y=1.12)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
