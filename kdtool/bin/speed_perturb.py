"""Copy a data dir once per speed factor (ids prefixed sp<factor>-, audio through sox speed).

    python -m kdtool.bin.speed_perturb --factors 0.9 1.0 1.1 data/train data/train_sp
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.data.perturb import speed_perturb


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--factors", type=float, nargs="+", default=[0.9, 1.0, 1.1])
    return p


def main():
    args = get_parser().parse_args()
    speed_perturb(args.src, args.dst, args.factors)


if __name__ == "__main__":
    run_main(main)
