"""RESULTS.md from every score.json under an exp dir, in the style of ESPnet's RESULTS.md: the papers'
table (one row per model and decoding method, see summary.py), the plots, the time of each stage, and
every test set in detail; exp/results.json holds the table's rows."""
import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from kdtool.scoring.plots import plot_learning_curves, plot_wer_vs_params
from kdtool.scoring.summary import busy, model_rows
from kdtool.utils.atomic import atomic_open

SUMMARY_COLUMNS = ("model", "kind", "decode", "params (M)", "size (MB)", "teacher", "compression (%)", "KD",
                   "dev WER", "test WER", "test CER", "RTF", "WER vs twin (rel. %)", "soft labels (B/frame)")
COLUMNS = ("model", "kind", "decode", "test set", "params (M)", "size (MB)", "WER", "CER", "S/D/I", "RTF")


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit():
    """HEAD of the repository kdtool is run from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment():
    """(name, value) pairs describing where the results were produced."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("python version", platform.python_version()),
        ("pytorch version", _version("torch")),
        ("espnet version", _version("espnet")),
        ("kdtool version", _version("kdtool")),
        ("git commit", _git_commit() or "unknown"),
        ("CPU", _cpu_model()),
        ("CPU threads", str(threads)),
        # the vector instructions torch's kernels use (AVX2, AVX512): run times differ with them
        ("CPU capability (torch)", _cpu_capability()),
    ]


def _cpu_capability():
    try:
        import torch
        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return "unknown"


def _fmt(value, spec, scale=1.0):
    return "-" if value is None else format(value / scale, spec)


def _row(path, s):
    """One table row (a dict keyed by COLUMNS, plus the command) from a score.json and its path."""
    decode_dir = path.parent
    model = Path(s["model_dir"]).name if s.get("model_dir") else decode_dir.parent.name
    return {
        "model": model, "kind": s.get("kind") or "-", "decode": s.get("method") or decode_dir.name,
        "test set": s.get("test_set") or "-",
        "params (M)": _fmt(s.get("params"), ".2f", 1e6), "size (MB)": _fmt(s.get("size_mb"), ".2f"),
        "WER": _fmt(s.get("wer"), ".2f"), "CER": _fmt(s.get("cer"), ".2f"),
        "S/D/I": f"{s.get('sub')}/{s.get('del')}/{s.get('ins')}", "RTF": _fmt(s.get("rtf"), ".4f") + ("*" if busy(s) else ""),
        "command": s.get("command") or "-",
    }


def collect(exp_dir):
    """A row per score.json under ``exp_dir``, sorted by model, test set, decode method."""
    rows = []
    for path in sorted(Path(exp_dir).rglob("score.json")):
        try:
            s = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        rows.append(_row(path, s))
    if not rows:
        raise ValueError(f"{exp_dir}: no score.json found (run the scoring stage first)")
    return sorted(rows, key=lambda r: (r["model"], r["test set"], r["decode"]))


def _cell(text):
    return str(text).replace("|", "\\|")


def _summary_cells(r):
    rel = "-" if r["test_wer_rel_pct"] is None else f"{r['dev_wer_rel_pct']:+.1f} / {r['test_wer_rel_pct']:+.1f}"
    return {"model": r["name"], "kind": r["kind"], "decode": r["decode"],
            "params (M)": _fmt(r["params"], ".2f", 1e6), "size (MB)": _fmt(r["size_mb"], ".2f"),
            "teacher": r["teacher"] or "-", "compression (%)": _fmt(r["compression_pct"], ".1f"),
            "KD": "+".join(r["kd"]) + (" (+untranscribed)" if r["untranscribed"] else "") or "-", "dev WER": _fmt(r["dev_wer"], ".2f"),
            "test WER": _fmt(r["test_wer"], ".2f"), "test CER": _fmt(r["test_cer"], ".2f"),
            "RTF": _fmt(r["rtf"], ".4f") + ("*" if r["rtf_busy"] else ""), "WER vs twin (rel. %)": rel,
            "soft labels (B/frame)": _fmt(r["soft_label_bytes_per_frame"], ".1f")}


def _table(columns, rows):
    return (["|" + "|".join(columns) + "|", "|" + "|".join("---" for _ in columns) + "|"]
            + ["|" + "|".join(_cell(r[c]) for c in columns) + "|" for r in rows])


def stage_times(exp_dir):
    """[(stage, finished at, seconds)] from kd.sh's stage_times.tsv: every run of a stage, in order
    (a stage rerun for some models only, or resumed after a stop, is one more line)."""
    path = Path(exp_dir) / "stage_times.tsv"
    if not path.is_file():
        return []
    runs = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    return [(stage, when, int(sec)) for stage, when, sec in (r for r in runs if len(r) == 3) if sec.isdigit()]


def benchmark_section(exp_dir):
    """The decoding benchmark's table (``kdtool.bin.benchmark_decode --out_dir <exp>/benchmark_decode``),
    one heading down, if it was run: exp/ is not in git, RESULTS.md is."""
    path = Path(exp_dir) / "benchmark_decode" / "benchmark.md"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8").strip().split("\n")
    if text[0].startswith("# "):
        text[0] = f"#{text[0]} ({path})"
    return [""] + text


def write_results(exp_dir, out, title="RESULTS", dev_set="dev", test_set="test", plots_dir=None, notes=None):
    """Write the Markdown results of ``exp_dir`` to ``out``, ``exp_dir``/results.json and the plots
    (in ``plots_dir``, default: beside ``out``); return the summary rows. ``notes``: a Markdown file
    the recipe's maintainers write (what the numbers mean, what was tried), put under the table."""
    # read first: a wrong --notes path fails before any output is written
    notes_text = Path(notes).read_text(encoding="utf-8").strip() if notes else None
    details = collect(exp_dir)
    rows = model_rows(exp_dir, dev_set, test_set)
    with atomic_open(Path(exp_dir) / "results.json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
    plots_dir = Path(plots_dir) if plots_dir else Path(out).parent / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_wer_vs_params(rows, plots_dir / "wer_vs_params.png", test_set),
             plot_learning_curves(sorted({Path(exp_dir) / r["name"] for r in rows}), plots_dir / "learning_curves.png")]

    lines = ["<!-- Generated by python -m kdtool.bin.make_results -->", f"# {title}", "",
             "## Environments", ""]
    lines += [f"- {name}: `{value}`" for name, value in environment()]
    lines += ["", f"## Models ({exp_dir}; dev = {dev_set}, test = {test_set})", "",
              "WER and CER in %. compression: parameters saved against the model's teacher. "
              "WER vs twin: relative change of dev / test WER against the same student trained without KD "
              "(negative = KD helped). RTF = decoding time / audio duration, one CPU thread; * = decoded while other "
              "work kept every core busy (load average above the CPU count), so the RTF is inflated.", ""]
    lines += _table(SUMMARY_COLUMNS, [_summary_cells(r) for r in rows])
    lines += [""] + [f"![{p.stem}]({os.path.relpath(p, Path(out).parent)})" for p in plots if p]
    if notes:
        lines += ["", "## Notes", "", f"<!-- from {notes} -->", notes_text]
    lines += benchmark_section(exp_dir)
    times = stage_times(exp_dir)
    if times:
        total = sum(sec for _, _, sec in times)
        lines += ["", "## Time of each stage", "", "Every run kd.sh recorded (exp/stage_times.tsv): a stage run again "
                  "for some models, or resumed after a stop, is another line.", "",
                  "|stage|finished|seconds|minutes|", "|---|---|---|---|"]
        lines += [f"|{stage}|{when}|{sec}|{sec / 60:.1f}|" for stage, when, sec in times]
        lines += [f"|all||{total}|{total / 60:.1f}|"]
    lines += ["", "## How each model was made", ""]
    for name in dict.fromkeys(r["name"] for r in rows):
        r = next(x for x in rows if x["name"] == name)
        lines += [f"- {name}: config `{r['config'] or '-'}`", "  ```", f"  {r['command'] or '-'}", "  ```"]
    lines += ["", "## Every test set", "",
              "S/D/I are word substitutions, deletions, insertions.", ""]
    lines += _table(COLUMNS, details)
    lines += ["", "## Decode commands", ""]
    for r in details:
        lines += [f"- {r['model']} / {r['test set']} / {r['decode']}:", "  ```", f"  {r['command']}", "  ```"]
    with atomic_open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return rows
