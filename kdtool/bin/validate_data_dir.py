"""Check a Kaldi-style data dir: sorting, id consistency, speaker maps, transcripts, audio, features.

    python -m kdtool.bin.validate_data_dir --audio --sample-rate 16000 data/train
    python -m kdtool.bin.validate_data_dir --feats dump/fbank/train

Exits 1 with every problem listed (file, utterance, what is wrong).
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.data.validate import validate_data_dir


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("--audio", action="store_true",
                   help="read every utterance's audio: readable, not cut short, finite samples")
    p.add_argument("--sample-rate", type=int, default=None, help="expected sample rate (with --audio)")
    p.add_argument("--require-text", action="store_true", help="fail if the dir has no transcripts")
    p.add_argument("--feats", action="store_true",
                   help="read every utterance's features: readable, one dimension, frames as in utt2num_frames")
    p.add_argument("--cmd_timeout", type=float, default=None,
                   help="seconds a wav.scp command may run (default: $KDTOOL_WAV_CMD_TIMEOUT or 300)")
    return p


def main():
    args = get_parser().parse_args()
    validate_data_dir(args.data_dir, check_audio=args.audio, sample_rate=args.sample_rate,
                      require_text=args.require_text, check_feats=args.feats, cmd_timeout=args.cmd_timeout)


if __name__ == "__main__":
    run_main(main)
