"""Choose a decoding option on the dev set: decode it with every combination of a grid, for one or more
models, and rank the combinations by their mean WER over the models.

    python -m kdtool.bin.tune_decode --config conf/decode_nar_maskctc_beam5.yaml --data dump/fbank/dev \
        --grid threshold=0.3,0.4,0.5 --grid ctc_weight=1,3 --out_dir exp/tune_maskctc_beam5 \
        exp/nar_student exp/nar_student_kd_frame

Each --grid KEY=V1,V2,... overrides KEY of --config (values are read as YAML: 0.3, 3, true). Writes
under --out_dir one decode dir per model and combination (``<model>/<key>_<value>...``: text,
score.json; a rerun skips those decoded from the same weights, features and config), ``results.tsv``
(one line per combination: its options, each model's WER, the mean; best first) and ``best.yaml``
(--config with the best combination: copy it over the recipe's decode config). Choose on dev only:
a test set tuned on is no test set.
"""
import argparse
import itertools
import logging
from pathlib import Path

import yaml

from kdtool.bin._common import command_line, run_main
from kdtool.bin.score import score_decode_dir
from kdtool.decode.runner import decode_dir, resolve_decode_config, up_to_date
from kdtool.utils.atomic import atomic_open, write_lines
from kdtool.utils.yamlfile import read_yaml


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="decode YAML whose options the grid overrides")
    p.add_argument("--data", required=True, help="feature dir to tune on (the dev set), with text")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="an option and the values to try; repeat for more options (every combination is run)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("model_dirs", nargs="+", help="trained exp dirs; the mean WER over them ranks a combination")
    return p


def parse_grid(items):
    """['threshold=0.3,0.5', 'ctc_weight=1'] -> {'threshold': [0.3, 0.5], 'ctc_weight': [1]}."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if key in grid:
            raise ValueError(f"--grid {key}: given twice")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def combinations(grid):
    """Every combination of the grid's values, as {key: value} in the grid's order."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def combination_name(combo):
    """A directory name for a combination: threshold_0.3-ctc_weight_3 (``base`` for the empty grid)."""
    return "-".join(f"{k}_{str(v).lower()}" for k, v in combo.items()) or "base"


def rank(table):
    """[(combo, {model: wer})] -> the same with each one's mean WER, best first (stable: ties keep grid order)."""
    scored = [(combo, wers, sum(wers.values()) / len(wers)) for combo, wers in table]
    return sorted(scored, key=lambda row: row[2])


def main():
    args = get_parser().parse_args()
    base = read_yaml(args.config, "decode config")
    grid = parse_grid(args.grid)
    combos = combinations(grid)
    # every combination checked before any decoding: a typo fails at once
    resolved = [resolve_decode_config({**base, **c}, source=f"{args.config} with {combination_name(c)}") for c in combos]
    out = Path(args.out_dir)
    table = []
    for combo, (method, options) in zip(combos, resolved):
        wers = {}
        for model_dir in args.model_dirs:
            dec = out / Path(model_dir).name / combination_name(combo)
            if not up_to_date(dec, model_dir, args.data, method, options):
                decode_dir(model_dir, args.data, method, options, dec, args.num_threads,
                           command_line("kdtool.bin.tune_decode"), args.device)
            wers[Path(model_dir).name] = score_decode_dir(args.data, dec)["wer"]
        logging.info("%s: %s", combination_name(combo), ", ".join(f"{m} {w:.2f}" for m, w in wers.items()))
        table.append((combo, wers))

    ranked = rank(table)
    models = [Path(m).name for m in args.model_dirs]
    header = "\t".join(list(grid) + models + ["mean"])
    write_lines(out / "results.tsv", [header] + [
        "\t".join([str(c[k]) for k in grid] + [f"{w[m]:.2f}" for m in models] + [f"{mean:.2f}"])
        for c, w, mean in ranked])
    best = ranked[0][0]
    with atomic_open(out / "best.yaml", "w", encoding="utf-8") as f:
        f.write(f"# {args.config} tuned on {args.data}: mean WER {ranked[0][2]:.2f} over {', '.join(models)}\n"
                f"# ({out / 'results.tsv'} has every combination)\n")
        yaml.safe_dump({**base, **best}, f, sort_keys=False)
    print((out / "results.tsv").read_text(), end="")
    print(f"best: {combination_name(best)} (mean WER {ranked[0][2]:.2f}) -> {out / 'best.yaml'}")


if __name__ == "__main__":
    run_main(main)
