"""Stage 7: RESULTS.md, exp/results.json and the plots from every score.json and model_info.json under an
exp dir (the papers' table: size, compression, KD terms, dev/test WER, speed, gain over the twin).

    python -m kdtool.bin.make_results --exp exp --out RESULTS.md --title mini_en --dev_set dev --test_set test \
        --notes local/results_notes.md
"""
import argparse
import logging

from kdtool.bin._common import run_main
from kdtool.scoring.results import write_results


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="exp", help="searched for <model>/model_info.json and */score.json")
    p.add_argument("--out", default="RESULTS.md")
    p.add_argument("--title", default="RESULTS")
    p.add_argument("--dev_set", default="dev", help="the set the table's 'dev WER' column comes from")
    p.add_argument("--test_set", default="test", help="the set of the 'test WER', 'test CER' and 'RTF' columns")
    p.add_argument("--plots_dir", default=None, help="where the PNGs go (default: plots/ beside --out)")
    p.add_argument("--notes", default=None, help="Markdown written by hand (findings, what was tried), put under "
                                                 "the table as '## Notes'")
    return p


def main():
    args = get_parser().parse_args()
    rows = write_results(args.exp, args.out, args.title, args.dev_set, args.test_set, args.plots_dir, args.notes)
    logging.info("%s, %s/results.json: %d rows", args.out, args.exp, len(rows))


if __name__ == "__main__":
    run_main(main)
