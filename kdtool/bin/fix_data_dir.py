"""Sort a data dir's files (LC_ALL=C), drop utterances missing from any file or with an empty
transcript, and rebuild spk2utt. Originals are kept in <data_dir>/.backup/.

    python -m kdtool.bin.fix_data_dir data/train
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.data.fix import fix_data_dir


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    return p


def main():
    fix_data_dir(get_parser().parse_args().data_dir)


if __name__ == "__main__":
    run_main(main)
