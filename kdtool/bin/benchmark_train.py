"""Training speed of a config on one CPU thread, with each CPU speed option on and off.

    python -m kdtool.bin.benchmark_train --config conf/teachers/train_ar_teacher.yaml --steps 30 \
        --out_dir exp/benchmark_train/ar_teacher
    python -m kdtool.bin.benchmark_train --config conf/train_nar_small.yaml --data dump/fbank/train \
        --token_list data/token_list/char --cmvn dump/fbank/train/cmvn.ark --steps 30 --variants both compile

Variants: torch (torch's dropout, the unfused Adam: kdtool before fast_dropout), fast_dropout,
fused_adam, both (kdtool's CPU defaults), compile (both, with the model under torch.compile, dynamic
shapes), compile_static (a graph per batch shape: with few --batches only). Compilation is in the
warm-up, reported apart; a variant that fails to compile is reported as failed. They take turns, --steps_per_round steps
each, on the same fixed batches (--data's first --batches batches by the config's batch_frames, or
--batches synthetic ones: random features and tokens, utterances of --frames frames). A KD config
trains its supervised loss (kd_conf is ignored). Speed-ups are of CPU time per step, which other
processes on the machine disturb much less than the wall clock (cache and memory bandwidth still
shared: compare the ratios, not the absolute times, on a loaded machine). Writes --out_dir/
benchmark_train.md and .json (rows and the environment). See kdtool/train/benchmark.py.
"""
import argparse
import json
import logging
from pathlib import Path

import torch

from kdtool.bin._common import command_line, run_main
from kdtool.errors import ConfigError
from kdtool.tokens import Tokenizer
from kdtool.train.benchmark import VARIANTS, data_batches, markdown, run_benchmark, synthetic_batches
from kdtool.models.build import MODEL_KEYS
from kdtool.train.config import TRAIN_KEYS, config_source, read_config, resolve_config
from kdtool.utils.atomic import atomic_open
from kdtool.utils.environment import environment


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (a KD student's: its supervised part)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, as kdtool.bin.train")
    p.add_argument("--data", help="feature dir (feats.scp, text); default: synthetic batches")
    p.add_argument("--token_list", help="with --data: its token list dir")
    p.add_argument("--cmvn", help="with --data: its cmvn.ark")
    p.add_argument("--vocab_size", type=int, default=40, help="synthetic batches: tokens (mini_en's chars: ~30)")
    p.add_argument("--frames", default="150,350",
                   help="synthetic batches: utterance lengths MIN,MAX in frames (mini_en: 2.4 s on average)")
    p.add_argument("--batches", type=int, default=10, help="distinct batches, cycled through")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--steps_per_round", type=int, default=5)
    p.add_argument("--warmup_steps", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--variants", nargs="+", default=["fast_dropout", "fused_adam", "both"], choices=sorted(VARIANTS),
                   help="besides the baseline (torch), which always runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (stage 3 on one core: 1)")
    p.add_argument("--out_dir", help="write benchmark_train.md and benchmark_train.json here")
    return p


KD_KEYS = ("kd_conf", "init_conf")  # a KD student's keys besides the training ones (kdtool.kd.distill)


def load_training_config(path, overrides):
    """The config's training part, resolved (a KD student's kd_conf and init_conf left out)."""
    raw = read_config(path, overrides, known=MODEL_KEYS | TRAIN_KEYS | set(KD_KEYS))
    return resolve_config({k: v for k, v in raw.items() if k not in KD_KEYS}, source=config_source(path, overrides))


def main():
    parser = get_parser()
    args = parser.parse_args()
    for name in ("batches", "steps", "steps_per_round", "threads", "vocab_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    if args.data and not (args.token_list and args.cmvn):
        parser.error("--data needs --token_list and --cmvn")
    try:
        frames = tuple(int(v) for v in args.frames.split(","))
        assert len(frames) == 2 and 0 < frames[0] <= frames[1]
    except (ValueError, AssertionError):
        parser.error(f"--frames: expected MIN,MAX frames (e.g. 150,350), not {args.frames!r}")
    try:
        config = load_training_config(args.config, args.set)
    except ConfigError as e:
        parser.error(str(e))
    torch.set_num_threads(args.threads)
    if args.data:
        tokenizer = Tokenizer(args.token_list)
        vocab_size = len(tokenizer)
        batches = data_batches(args.data, tokenizer, args.cmvn, config["batch_frames"], args.batches,
                               config["max_batch_size"])
    else:
        vocab_size = args.vocab_size
        batches = synthetic_batches(config["batch_frames"], args.batches, vocab_size, frames=frames,
                                    seed=config["seed"])
    logging.info("%s: %d batches of %.0f frames on average, %d torch thread(s)", args.config, len(batches),
                 sum(int(b["feats_lens"].sum()) for b in batches) / len(batches), args.threads)
    rows = run_benchmark(config, batches, vocab_size, args.variants, args.steps, args.steps_per_round,
                         args.warmup_steps)
    table = markdown(rows, f"{args.config} ({'data: ' + args.data if args.data else 'synthetic batches'}, "
                           f"{args.threads} thread(s))")
    print(table)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "benchmark_train.md") as f:
            f.write(table)
        with atomic_open(out / "benchmark_train.json") as f:
            json.dump({"command": command_line("kdtool.bin.benchmark_train"), "config": args.config,
                       "environment": dict(environment()), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    run_main(main)
