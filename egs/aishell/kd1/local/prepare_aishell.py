#!/usr/bin/env python3
"""Make a Kaldi-style data dir from one AISHELL-1 set (what Kaldi's local/aishell_data_prep.sh does).

    python local/prepare_aishell.py /path/to/aishell train data/train

The corpus folder is the one holding data_aishell/, or data_aishell itself. Reads
data_aishell/wav/<set>/<speaker>/<utt>.wav and data_aishell/transcript/aishell_transcript_v0.8.txt;
writes wav.scp (<utt> <absolute path of the .wav>), text (the characters, spaces removed: Mandarin
is modelled in character units), utt2spk (<utt> <utt[:11]>, e.g. BAC009S0002W0122 BAC009S0002, so
that the speaker id is a prefix of the utterance id) and spk2utt.

Audio files without a transcript line are skipped and counted (the real corpus has a few); transcript
lines without audio are ignored (the transcript covers every set). A transcript line without text,
or listed twice, is an error naming the file and the utterance.
"""
import argparse
import logging
import os
from pathlib import Path

from kdtool.bin._common import run_main
from kdtool.data.datadir import DataDir

TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
SETS = ("train", "dev", "test")
SPK_LEN = 11  # BAC009S0002 of BAC009S0002W0122


class CorpusError(ValueError):
    """The corpus on disk is not laid out as expected; the message names the file."""


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus_dir", help="the folder holding data_aishell/, or data_aishell itself")
    p.add_argument("set", choices=SETS)
    p.add_argument("data_dir", help="the data dir to write, e.g. data/train")
    return p


def find_data_aishell(corpus_dir):
    corpus_dir = Path(corpus_dir)
    for cand in (corpus_dir / "data_aishell", corpus_dir):
        if (cand / "wav").is_dir() and (cand / TRANSCRIPT).is_file():
            return cand
    if not corpus_dir.is_dir():
        raise CorpusError(f"{corpus_dir}: AISHELL-1 folder does not exist")
    raise CorpusError(f"{corpus_dir}: not an AISHELL-1 folder: expected data_aishell/wav/ and "
                      f"data_aishell/{TRANSCRIPT} in it (or wav/ and {TRANSCRIPT} directly)")


def read_transcript(path):
    """Return {utt: characters without spaces}."""
    text = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            utt = parts[0]
            chars = "".join(parts[1].split()) if len(parts) > 1 else ""
            if not chars:
                raise CorpusError(f"{path}:{lineno}: utterance {utt}: transcript has no text")
            if utt in text:
                raise CorpusError(f"{path}:{lineno}: utterance {utt}: listed twice")
            text[utt] = chars
    return text


def prepare(corpus_dir, set_name, data_dir):
    root = find_data_aishell(corpus_dir)
    set_dir = root / "wav" / set_name
    if not set_dir.is_dir():
        archives = sorted(p.name for p in (root / "wav").glob("*.tar.gz"))
        hint = (f"; {root / 'wav'} holds {len(archives)} .tar.gz archive(s): extract them there first "
                f"(for f in *.tar.gz; do tar xzf $f; done)") if archives else ""
        raise CorpusError(f"{set_dir}: folder for the {set_name} set does not exist{hint}")
    transcript = read_transcript(root / TRANSCRIPT)

    wav_scp, utt2spk, text = {}, {}, {}
    untranscribed, approx_bytes = [], 0
    for wav in sorted(set_dir.glob("*/*.wav")):
        utt = wav.stem
        if utt in wav_scp:
            raise CorpusError(f"{wav}: utterance {utt} also found as {wav_scp[utt]}")
        if utt not in transcript:
            untranscribed.append(utt)
            continue
        spk = utt[:SPK_LEN]
        if len(utt) <= SPK_LEN or not spk.endswith(wav.parent.name):
            raise CorpusError(f"{wav}: utterance id {utt} does not look like AISHELL-1's "
                              f"(BAC009<speaker folder {wav.parent.name}>W<number>)")
        wav_scp[utt], utt2spk[utt], text[utt] = os.path.abspath(wav), spk, transcript[utt]
        approx_bytes += wav.stat().st_size - 44
    if untranscribed:
        logging.warning("%s: skipped %d audio file(s) without a transcript line in %s (e.g. %s)",
                        set_dir, len(untranscribed), root / TRANSCRIPT, ", ".join(untranscribed[:3]))
    if not wav_scp:
        raise CorpusError(f"{set_dir}: no transcribed utterances found (expected <speaker>/<utt>.wav)")
    DataDir.write(data_dir, wav_scp, utt2spk, text)
    logging.info("%s -> %s: %d utterances, %d speakers, %d characters, about %.1f hours "
                 "(from file sizes, as 16 kHz 16-bit mono)", set_dir, data_dir, len(wav_scp),
                 len(set(utt2spk.values())), sum(len(t) for t in text.values()), approx_bytes / 32000 / 3600)


def main():
    args = get_parser().parse_args()
    prepare(args.corpus_dir, args.set, args.data_dir)


if __name__ == "__main__":
    run_main(main)
