"""Train the output units on training transcripts and write the shared token list.

    python -m kdtool.bin.make_tokens --token_type bpe --vocab_size 300 data/train/text data/token_list/bpe_unigram300
    python -m kdtool.bin.make_tokens --token_type char data/train/text data/token_list/char

Writes tokens.txt (<blank> <unk> units... <sos/eos> <mask>), token_type and, for bpe, bpe.model.
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.tokens import build_token_list


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help="a Kaldi text file")
    p.add_argument("out_dir")
    p.add_argument("--token_type", choices=["bpe", "char"], default="bpe")
    p.add_argument("--vocab_size", type=int, default=300, help="sentencepiece vocabulary size (bpe only)")
    p.add_argument("--bpe_model_type", choices=["unigram", "bpe"], default="unigram")
    return p


def main():
    args = get_parser().parse_args()
    build_token_list(args.text, args.out_dir, args.token_type, args.vocab_size, args.bpe_model_type)


if __name__ == "__main__":
    run_main(main)
