"""Global CMVN statistics (Kaldi layout) over a feats.scp; every utterance is checked as it is read
(readable, one dimension, frames as in utt2num_frames, finite), and non-finite statistics are refused.

    python -m kdtool.bin.compute_cmvn dump/fbank/train/feats.scp dump/fbank/train/cmvn.ark
"""
import argparse
import logging

from kdtool.bin._common import run_main
from kdtool.features.cmvn import compute_cmvn, mean_std


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("feats_scp")
    p.add_argument("out")
    return p


def main():
    args = get_parser().parse_args()
    stats = compute_cmvn(args.feats_scp, args.out)
    mean, std = mean_std(stats)
    logging.info("%s: %d frames, mean %.2f..%.2f, std %.2f..%.2f", args.out, stats[0, -1], mean.min(), mean.max(),
                 std.min(), std.max())


if __name__ == "__main__":
    run_main(main)
