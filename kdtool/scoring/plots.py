"""The pictures users look at first: test WER against model size (KD students against their twins), and
the learning curves of every model side by side."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kdtool.train.plot import read_metrics  # noqa: E402
from kdtool.utils.atomic import atomic_path  # noqa: E402

KIND_COLORS = {"ar": "tab:blue", "nar": "tab:orange", "ctc": "tab:green", "transducer": "tab:purple"}


def _save(fig, out_png, dpi):
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def plot_wer_vs_params(rows, out_png, test_set="test"):
    """Write wer_vs_params_figure(rows) to out_png; None (and no file) when no row has a test WER."""
    fig = wer_vs_params_figure(rows, test_set)
    if fig is None:
        return None
    _save(fig, out_png, dpi=110)
    return out_png


def wer_vs_params_figure(rows, test_set="test"):
    """One point per (model, decoding method): * a model trained from scratch (a teacher), o filled a
    distilled student, o hollow its twin without KD; a grey line joins a student to its twin. Points
    carry numbers; the key beside the axes names them (names would print over each other)."""
    rows = [r for r in rows if r["test_wer"] is not None and r["params"]]
    if not rows:
        return None
    twins = {r["twin"] for r in rows}
    key = [f"{i:>2}  {r['name']} ({r['decode']})" for i, r in enumerate(rows, 1)]
    # the key and the legend go right of the axes, never over a point: the figure widens for the
    # longest key line (monospace 7 pt: ~0.06 in a character) and grows taller for many rows
    key_w = 0.3 + 0.06 * max(len(k) for k in key)
    width, height = 7.5 + key_w, max(6.0, 2.4 + 0.12 * len(key))
    fig, ax = plt.subplots(figsize=(width, height))
    where = {(r["name"], r["decode"]): (r["params"] / 1e6, r["test_wer"]) for r in rows}
    for r in rows:
        x, y = where[(r["name"], r["decode"])]
        color = KIND_COLORS.get(r["kind"], "tab:gray")
        if r["twin"] and (r["twin"], r["decode"]) in where:
            tx, ty = where[(r["twin"], r["decode"])]
            ax.plot([tx, x], [ty, y], color="0.75", lw=0.8, zorder=1)
        if not r["kd"] and r["name"] not in twins:  # trained from scratch, no one's twin: a teacher
            ax.scatter(x, y, marker="*", s=180, color=color, zorder=3)
        else:
            ax.scatter(x, y, marker="o", s=45, zorder=3, color=color if r["kd"] else "white", edgecolors=color)
    _number(ax, [where[(r["name"], r["decode"])] for r in rows])
    right = 7.2 / width
    fig.text(right + 0.02, 0.95, "\n".join(key), fontsize=7, family="monospace", va="top")
    for kind, color in KIND_COLORS.items():
        if any(r["kind"] == kind for r in rows):
            ax.scatter([], [], color=color, label=kind)
    ax.scatter([], [], marker="*", color="k", label="teacher")
    ax.scatter([], [], marker="o", color="k", label="with KD")
    ax.scatter([], [], marker="o", color="white", edgecolors="k", label="without KD (twin)")
    ax.set_xscale("log")
    lo, hi = min(x for x, _ in where.values()), max(x for x, _ in where.values())
    ax.set_xlim(lo / 1.5, hi * 1.6)
    ax.set_xlabel("parameters (M, log scale)")
    ax.set_ylabel(f"{test_set} WER (%)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower left", bbox_to_anchor=(right + 0.02, 0.04),
               ncol=2)
    ax.set_title("WER against model size")
    fig.subplots_adjust(left=0.55 / width, right=right, bottom=0.1, top=0.93)
    return fig


def _number(ax, points):
    """Number the points 1..n; points of about the same size (a student, its twin, its decodings) get
    their numbers stacked top to bottom at least a line apart, joined to their points."""
    ys = [y for _, y in points]
    gap = max(max(ys) - min(ys), 1.0) * 0.04
    columns = {}
    for i, (x, y) in enumerate(points, 1):  # sizes within 5% of each other share a column
        key = next((k for k in columns if abs(k - x) <= 0.05 * k), x)
        columns.setdefault(key, []).append((i, x, y))
    for column in columns.values():
        last = None
        for i, x, y in sorted(column, key=lambda p: -p[2]):
            ty = y if last is None else min(y, last - gap)
            ax.annotate(str(i), (x, y), xytext=(x * 1.1, ty), textcoords="data", fontsize=7, va="center",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
            last = ty


def plot_learning_curves(model_dirs, out_png):
    """Small multiples: training loss per step and validation loss per epoch of each model."""
    curves = [(Path(d).name, *read_metrics(Path(d) / "csv")) for d in model_dirs]
    curves = [c for c in curves if c[1] or c[2]]
    if not curves:
        return None
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, train, valid) in zip(axes.flat, curves):
        if train:
            steps, losses = zip(*train)
            ax.plot(steps, losses, color="tab:blue", alpha=0.5, lw=0.8, label="train (step)")
        if valid:
            # validation points at the step where each epoch ended, on the same axis
            per_epoch = max(s for s, _ in train) / max(e for e, _ in valid) if train else 1
            ax.plot([e * per_epoch for e, _ in valid], [v for _, v in valid], color="tab:red", marker="o", ms=3,
                    label="valid (epoch)")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("learning curves (loss per utterance, log scale)")
    fig.tight_layout()
    _save(fig, out_png, dpi=90)
    return out_png
