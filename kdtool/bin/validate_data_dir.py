"""Check a Kaldi-style data dir: sorting, id consistency, speaker maps, transcripts, audio.

    python -m kdtool.bin.validate_data_dir --audio --sample-rate 16000 data/train

Exits 1 with every problem listed (file, utterance, what is wrong).
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.data.validate import validate_data_dir


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("--audio", action="store_true", help="open every audio file and check it")
    p.add_argument("--sample-rate", type=int, default=None, help="expected sample rate (with --audio)")
    p.add_argument("--require-text", action="store_true", help="fail if the dir has no transcripts")
    return p


def main():
    args = get_parser().parse_args()
    validate_data_dir(args.data_dir, check_audio=args.audio, sample_rate=args.sample_rate,
                      require_text=args.require_text)


if __name__ == "__main__":
    run_main(main)
