"""Combine data dirs into one, as Kaldi's utils/combine_data.sh: e.g. LibriSpeech's 960 h,

    python -m kdtool.bin.combine_data_dirs data/train_960 data/train_clean_100 data/train_clean_360 \
        data/train_other_500

wav.scp, text and utt2spk (and segments, utt2num_frames, feats.scp) are concatenated where every input
has them (a file only some have is left out, with a warning), spk2utt is regenerated, all sorted with
LC_ALL=C. An utterance id in two inputs is an error naming both. Check the result with validate_data_dir.
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.data.combine import combine_data_dirs


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="the combined data dir (created; its combined files are replaced)")
    p.add_argument("in_dirs", nargs="+", help="the data dirs to combine")
    return p


def main():
    args = get_parser().parse_args()
    d = combine_data_dirs(args.out_dir, args.in_dirs)
    print(f"{args.out_dir}: {len(d.utts)} utterances from {len(args.in_dirs)} data dirs")


if __name__ == "__main__":
    run_main(main)
