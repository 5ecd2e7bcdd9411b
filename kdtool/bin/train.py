"""Stage 3: train a model (teacher, or a student without distillation) from a YAML config.

    python -m kdtool.bin.train --config conf/tuning/train_ar_teacher.yaml \
        --train_data dump/fbank/train --valid_data dump/fbank/dev \
        --token_list data/token_list/bpe_unigram300 --cmvn dump/fbank/train/cmvn.ark \
        --exp_dir exp/teacher_ar

Multi-GPU: --devices 4; multi-node: --num_nodes 2 under torchrun or SLURM (same command on each).
A rerun resumes from the last checkpoint. See kdtool/train/trainer.py for the exp dir layout.
"""
import argparse

import torch

from kdtool.bin._common import command_line, run_main
from kdtool.errors import ConfigError
from kdtool.models.build import build_model
from kdtool.train.config import config_source, load_config, model_part
from kdtool.train.trainer import train


def get_parser(description=__doc__):
    """The options every training entry point takes (stage 5's distill adds its own)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="model + training YAML (may name a base: config it overrides)")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override config keys for this run: dotted keys, YAML values "
                        "(kd_conf.alpha=0.3 max_epoch=5); the exp dir's config.yaml is the result")
    p.add_argument("--train_data", required=True, nargs="+", help="feature dir(s) from stage 2")
    p.add_argument("--valid_data", required=True)
    p.add_argument("--token_list", required=True, help="token-list dir from stage 2")
    p.add_argument("--cmvn", required=True, help="global CMVN stats of the training set")
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    p.add_argument("--devices", default="auto", help="number of GPUs (or 'auto')")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--checkpoint_minutes", type=float, default=10,
                   help="also write the resume point (checkpoints/last.ckpt) every N minutes inside an epoch (0: off)")
    p.add_argument("--seed", type=int, default=None,
                   help="replaces the config's seed (initial weights, batch order, dropout): one run per seed")
    return p


def with_seed(config, seed):
    """``config`` with its seed replaced by ``seed`` unless that is None."""
    return config if seed is None else {**config, "seed": seed}


def model_checked(config, args):
    """``config`` once its model builds (on the meta device: no memory, no time), so that a bad model key, from
    the file, its base or --set, is named with the config file before any data is read."""
    try:
        with torch.device("meta"):
            build_model(model_part(config), vocab_size=8)
    except ConfigError as e:
        raise ConfigError(f"{config_source(args.config, args.overrides)}: {e}") from None
    return config


def devices(args):
    """--devices as lightning takes it: a GPU count, or 'auto'."""
    return int(args.devices) if args.devices.isdigit() else args.devices


def main():
    args = get_parser().parse_args()
    config = model_checked(with_seed(load_config(args.config, args.overrides), args.seed), args)
    train(config, args.exp_dir, args.train_data, args.valid_data, args.token_list, args.cmvn,
          devices=devices(args), num_nodes=args.num_nodes, accelerator=args.accelerator,
          extra_info={"config": args.config, "overrides": args.overrides, "twin_config": None, "teacher": None,
                      "seed": config["seed"], "seed_option": args.seed, "command": command_line("kdtool.bin.train")},
          checkpoint_minutes=args.checkpoint_minutes)


if __name__ == "__main__":
    run_main(main)
