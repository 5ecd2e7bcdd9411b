"""RESULTS.md from every score.json under an exp dir, in the style of ESPnet's RESULTS.md: the papers'
table (one row per model and decoding method, see summary.py), the plots, the time of each stage, and
every test set in detail; exp/results.json holds the table's rows."""
import json
import os
from pathlib import Path

from kdtool.scoring import compression
from kdtool.scoring.plots import plot_learning_curves, plot_wer_vs_params
from kdtool.scoring.bootstrap import N_RESAMPLES
from kdtool.scoring.summary import busy, mean_std, model_rows, seed_groups
from kdtool.utils.atomic import atomic_open
from kdtool.utils.environment import environment

SUMMARY_COLUMNS = ("model", "kind", "decode", "params (M)", "size (MB)", "teacher", "compression (%)", "KD",
                   "dev WER", "test WER", "test CER", "RTF", "WER vs twin (rel. %)", "soft labels (B/frame)")
COLUMNS = ("model", "kind", "decode", "test set", "params (M)", "size (MB)", "WER", "CER", "S/D/I", "RTF")
COMPARISON_COLUMNS = ("model", "decode", "against", "set", "WER", "WER against", "difference (points) [95% CI]",
                      "relative (%) [95% CI]", "P(improvement)")
AGAINST = {"twin": "twin", "greedy": "greedy decoding", "teacher": "teacher", "fp32": "ONNX fp32"}
CER_CONVENTIONS = {"espnet": "CER counts each space between words as a `<space>` token (ESPnet's convention)",
                   "no_space": "CER leaves spaces out (kdtool's earlier convention)"}


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


def _interval(c, value, ci, spec):
    """``-27.1% [-31.0, -23.2]`` (``spec`` formats the numbers), bold when the interval excludes zero."""
    text = f"{c[value]:{spec}}" + ("%" if value == "rel_pct" else "")
    if c[ci]:
        text += f" [{c[ci][0]:{spec}}, {c[ci][1]:{spec}}]"
    return f"**{text}**" if c["significant"] else text


def _comparison(group, what, test_set):
    """The comparison the table shows for a group: on the pooled seeds for several, else the run's own."""
    pooled = len(group) > 1
    return next((c for c in group[0]["comparisons"] if c["against"] == what and c["set"] == test_set
                 and (c["pooled_seeds"] is not None) == pooled), None)


def _vs_twin(group, dev_set, test_set):
    r = group[0]
    if r["kd"] and not r["twin"]:
        return "no twin" if r["seed"] is None else "no twin of this seed"
    parts = []
    for x, key in ((dev_set, "dev_wer_rel_pct"), (test_set, "test_wer_rel_pct")):
        c = _comparison(group, "twin", x)
        if c and c["rel_pct"] is not None:
            parts.append(_interval(c, "rel_pct", "rel_pct_ci", "+.1f"))
        else:  # decodes scored without alignments (an older kdtool): no interval
            parts.append(_fmt(r[key], "+.1f") if len(group) == 1 else "-")
    return "-" if parts == ["-", "-"] else " / ".join(parts)


def _mean_cell(group, key, spec):
    mean, std = mean_std([r[key] for r in group])
    return _fmt(mean, spec) + ("" if std is None else f" ± {std:{spec}}")


def _summary_cells(group, dev_set, test_set):
    """One row of the table for a model and decoding: over several seeds, mean ± std."""
    r = group[0]
    seeds = [x["seed"] for x in group if x["seed"] is not None]
    name = r["name"] if len(group) == 1 else f"{r['model']} (seeds {','.join(map(str, seeds))})"
    return {"model": name, "kind": r["kind"], "decode": r["decode"],
            "params (M)": _fmt(r["params"], ".2f", 1e6), "size (MB)": _fmt(r["size_mb"], ".2f"),
            "teacher": r["teacher"] or "-", "compression (%)": _fmt(r["compression_pct"], ".1f"),
            "KD": "+".join(r["kd"]) + (" (+untranscribed)" if r["untranscribed"] else "") or "-",
            "dev WER": _mean_cell(group, "dev_wer", ".2f"), "test WER": _mean_cell(group, "test_wer", ".2f"),
            "test CER": _mean_cell(group, "test_cer", ".2f"),
            "RTF": _mean_cell(group, "rtf", ".4f") + ("*" if any(x["rtf_busy"] for x in group) else ""),
            "WER vs twin (rel. %)": _vs_twin(group, dev_set, test_set),
            "soft labels (B/frame)": _fmt(r["soft_label_bytes_per_frame"], ".1f")}


def comparison_lines(groups):
    """The table of every paired bootstrap RESULTS.md shows (twin, greedy decoding, teacher; each set)."""
    cells = []
    for group in groups:
        pooled = len(group) > 1
        for c in group[0]["comparisons"]:
            if (c["pooled_seeds"] is not None) != pooled:
                continue
            cells.append({"model": group[0]["model"] if pooled else group[0]["name"], "decode": group[0]["decode"],
                          "against": f"{AGAINST[c['against']]} ({c['other']})", "set": c["set"],
                          "WER": f"{c['wer']:.2f}", "WER against": f"{c['wer_other']:.2f}",
                          "difference (points) [95% CI]": _interval(c, "diff", "diff_ci", "+.2f"),
                          "relative (%) [95% CI]": ("-" if c["rel_pct"] is None
                                                    else _interval(c, "rel_pct", "rel_pct_ci", "+.1f")),
                          "P(improvement)": f"{c['p_improvement']:.3f}"})
    return _table(COMPARISON_COLUMNS, cells) if cells else []


def cer_conventions(exp_dir):
    """The CER conventions the score.json files under ``exp_dir`` name (older ones name none: no_space)."""
    found = set()
    for path in Path(exp_dir).rglob("score.json"):
        found.add(json.loads(path.read_text(encoding="utf-8")).get("cer_convention") or "no_space")
    return sorted(found)


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
              "work kept every core busy (load average above the CPU count), so the RTF is inflated. "
              + " ".join(CER_CONVENTIONS.get(c, f"CER convention {c}") + "." for c in cer_conventions(exp_dir)),
              "",
              f"The interval after a change is the 95% paired bootstrap confidence interval ({N_RESAMPLES:,} resamples "
              "of the set's utterances, both systems scored on the same draws): the range the change would likely "
              "take on another test set of the same kind and size. **Bold**: it excludes "
              "zero, so the difference is unlikely to be an accident of which sentences were tested; it says nothing "
              "of how much another training run would differ, which the rows with several seeds show (mean ± std, "
              "and the bootstrap on their pooled utterances).", ""]
    groups = seed_groups(rows)
    lines += _table(SUMMARY_COLUMNS, [_summary_cells(g, dev_set, test_set) for g in groups])
    lines += [""] + [f"![{p.stem}]({os.path.relpath(p, Path(out).parent)})" for p in plots if p]
    comparisons = comparison_lines(groups)
    if comparisons:
        lines += ["", "## Is the difference real? (paired bootstrap)", "",
                  "Each distilled model against its twin, each beam search against the greedy decoding of the same "
                  "model, each student against its teacher (the same decoding, else the teacher's best on dev), each "
                  "int8 export's decoding against the fp32 export's, on every set. difference: WER minus the other's WER, in points; P(improvement): the share of "
                  "resamples in which the model makes fewer errors than the other (a tie counts half). Bold: the "
                  "interval excludes zero.", ""] + comparisons
    lines += compression.lines(rows, test_set)
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
