"""Decoding speed of trained models on one CPU thread: every search against the encoder alone.

    python -m kdtool.bin.benchmark_decode --data dump/fbank/test --out_dir exp/benchmark_decode \
        --max_utts 200 exp/teacher_ar exp/student_nar exp/teacher_transducer \
        --decode_configs conf/decode_nar_maskctc_greedy.yaml conf/decode_nar_maskctc_beam5.yaml

Each model decodes the first --max_utts utterances of --data (sorted ids, the same for every
model) with the encoder alone (the floor) and each of these that its kind allows: ctc_greedy,
maskctc_greedy, maskctc_beam with beam 1, 5 and 10, ar_beam10, transducer_beam4 (each with its
runner defaults, or the settings of the --decode_configs of its method, beam size and
batch size aside, and --batch_size), --repeats times, keeping the fastest. Writes into --out_dir:

    benchmark.md     a table: model, kind, params, method, RTF, RTF / encoder RTF, WER
    benchmark.json   the same rows with each method's config, seconds and the environment

Timings are only comparable within one run: run it on an otherwise idle machine.
See kdtool/decode/benchmark.py.
"""
import argparse
import shlex
import sys

from kdtool.bin._common import run_main
from kdtool.decode.benchmark import read_settings, run_benchmark
from kdtool.errors import ConfigError


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dirs", nargs="+", help="trained exp dirs (model.pth, config.yaml, tokens/, cmvn.ark)")
    p.add_argument("--data", required=True, help="feature dir from stage 2 (feats.scp, utt2num_frames; text for WER)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--max_utts", type=int, default=None, help="decode only the first N utterances (default: all)")
    p.add_argument("--batch_size", type=int, default=16, help="utterances per encoder call, for every method")
    p.add_argument("--repeats", type=int, default=1, help="decode N times, keep the fastest (less noise)")
    p.add_argument("--decode_configs", nargs="*", default=[],
                   help="conf/decode_*.yaml: their options (but beam_size, batch_size) replace the runner's "
                        "defaults for every row of their method, e.g. the recipe's Mask-CTC threshold")
    return p


def main():
    parser = get_parser()
    args = parser.parse_args()
    for name in ("max_utts", "batch_size", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be 1 or more, not {value}")
    try:
        settings = read_settings(args.decode_configs)
    except ConfigError as e:
        parser.error(str(e))
    command = "python -m kdtool.bin.benchmark_decode " + shlex.join(sys.argv[1:])
    rows = run_benchmark(args.model_dirs, args.data, args.out_dir, args.batch_size, args.max_utts, args.repeats,
                         command, settings)
    print(f"{args.out_dir}/benchmark.md: {len(rows)} rows for {len(args.model_dirs)} model(s)")


if __name__ == "__main__":
    run_main(main)
