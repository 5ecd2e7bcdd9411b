#!/usr/bin/env python3
"""Make a Kaldi-style data dir from one LibriSpeech subset (what Kaldi's local/data_prep.sh does).

    python local/prepare_librispeech.py /path/to/LibriSpeech/train-clean-100 data/train_clean_100

Reads <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt and the <utt>.flac files beside it;
writes wav.scp (<utt> <absolute path of the .flac>), text (the transcript as it is, upper case),
utt2spk (<utt> <speaker>-<chapter>, Kaldi's convention: a prefix of the utterance id) and spk2utt.

Fails, naming the file and the utterance, on a transcript line without audio, an audio file
without a transcript line, a transcript line without words, a duplicate utterance id, or an
utterance id that does not start with <speaker>-<chapter>-.
"""
import argparse
import logging
import os
from pathlib import Path

from kdtool.bin._common import run_main
from kdtool.data.datadir import DataDir


class CorpusError(ValueError):
    """The corpus on disk is not laid out as expected; the message names the file."""


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subset_dir", help="a LibriSpeech subset, e.g. /path/to/LibriSpeech/dev-clean")
    p.add_argument("data_dir", help="the data dir to write, e.g. data/dev_clean")
    return p


def _subdirs(path):
    return sorted(p for p in path.iterdir() if p.is_dir())


def read_chapter(chapter_dir, speaker, chapter):
    """Return [(utt, absolute flac path, words)] for one chapter folder."""
    trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
    flacs = {p.name[:-len(".flac")]: p for p in chapter_dir.iterdir() if p.name.endswith(".flac")}
    if not trans.is_file():
        if flacs:
            raise CorpusError(f"{trans}: transcript file not found, but {chapter_dir} has {len(flacs)} .flac file(s)")
        logging.warning("%s: no transcript and no audio; skipping the folder", chapter_dir)
        return []
    prefix = f"{speaker}-{chapter}-"
    utts, seen = [], set()
    with open(trans, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue  # a blank line carries no utterance
            parts = line.split(maxsplit=1)
            utt = parts[0]
            words = " ".join(parts[1].split()) if len(parts) > 1 else ""
            where = f"{trans}:{lineno}: utterance {utt}"
            if not words:
                raise CorpusError(f"{where}: transcript has no words")
            if not utt.startswith(prefix):
                raise CorpusError(f"{where}: id does not start with {prefix} (speaker-chapter of the folder)")
            if utt in seen:
                raise CorpusError(f"{where}: listed twice")
            if utt not in flacs:
                raise CorpusError(f"{where}: audio {chapter_dir / (utt + '.flac')} does not exist")
            seen.add(utt)
            utts.append((utt, os.path.abspath(flacs[utt]), words))
    orphans = sorted(set(flacs) - seen)
    if orphans:
        raise CorpusError(f"{flacs[orphans[0]]}: no line for utterance {orphans[0]} in {trans}"
                          + (f" (and {len(orphans) - 1} more audio file(s) without transcript)" if len(orphans) > 1 else ""))
    return utts


def prepare(subset_dir, data_dir):
    subset_dir = Path(subset_dir)
    if not subset_dir.is_dir():
        raise CorpusError(f"{subset_dir}: LibriSpeech subset folder does not exist")
    wav_scp, utt2spk, text = {}, {}, {}
    for spk_dir in _subdirs(subset_dir):
        for chap_dir in _subdirs(spk_dir):
            spk = f"{spk_dir.name}-{chap_dir.name}"
            for utt, path, words in read_chapter(chap_dir, spk_dir.name, chap_dir.name):
                if utt in wav_scp:  # only possible with odd folder names; never guess which one is right
                    raise CorpusError(f"{path}: utterance {utt} also found as {wav_scp[utt]}")
                wav_scp[utt], utt2spk[utt], text[utt] = path, spk, words
    if not wav_scp:
        raise CorpusError(f"{subset_dir}: no utterances found (expected <speaker>/<chapter>/<speaker>-<chapter>.trans.txt)")
    DataDir.write(data_dir, wav_scp, utt2spk, text)
    n_books = len(set(utt2spk.values()))
    n_readers = len({s.split("-")[0] for s in utt2spk.values()})
    logging.info("%s -> %s: %d utterances, %d speaker-chapters (%d readers), %d words",
                 subset_dir, data_dir, len(wav_scp), n_books, n_readers, sum(len(t.split()) for t in text.values()))


def main():
    args = get_parser().parse_args()
    prepare(args.subset_dir, args.data_dir)


if __name__ == "__main__":
    run_main(main)
