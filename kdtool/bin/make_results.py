"""Stage 7: RESULTS.md from every score.json under an exp dir (a table of WER, CER, size, speed).

    python -m kdtool.bin.make_results --exp exp --out RESULTS.md --title "mini_en kd1"
"""
import argparse
import logging

from kdtool.bin._common import run_main
from kdtool.scoring.results import write_results


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="exp", help="searched recursively for score.json")
    p.add_argument("--out", default="RESULTS.md")
    p.add_argument("--title", default="RESULTS")
    return p


def main():
    args = get_parser().parse_args()
    rows = write_results(args.exp, args.out, args.title)
    logging.info("%s: %d results from %s", args.out, len(rows), args.exp)


if __name__ == "__main__":
    run_main(main)
