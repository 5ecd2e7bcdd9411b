"""Token inventory shared by a teacher and all its students.

A token-list dir holds ``tokens.txt`` (one token per line; the line number is the id) and, for
sentencepiece units, ``bpe.model``. The list follows ESPnet's Mask-CTC convention:

    0: <blank>   1: <unk>   2..V-3: units   V-2: <sos/eos>   V-1: <mask>

so an ESPnet model given ``tokens[:-1]`` appends ``<mask>`` at the same id, and ids stay identical
between teacher and students whatever their kind.
"""
import collections
import logging
import os
from pathlib import Path

import sentencepiece as spm

from kdtool.utils.atomic import write_lines

BLANK, UNK, SOS_EOS, MASK = "<blank>", "<unk>", "<sos/eos>", "<mask>"
SPACE = "<space>"  # stands for a word boundary in character units
RESERVED = (BLANK, UNK, SOS_EOS, MASK)


def build_token_list(text_file, out_dir, token_type="bpe", vocab_size=300, model_type="unigram"):
    """Train the unit model on the transcripts of ``text_file`` (Kaldi ``text``) and write the token list."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [ln.split(maxsplit=1)[1] for ln in Path(text_file).read_text(encoding="utf-8").splitlines()
             if len(ln.split(maxsplit=1)) == 2]
    if not lines:
        raise ValueError(f"{text_file}: no transcripts to build a token list from")
    if token_type == "char":
        counts = collections.Counter(ch for ln in lines for ch in " ".join(ln.split()))
        units = [SPACE if c == " " else c for c, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
    elif token_type == "bpe":
        corpus = out_dir / "train_text.txt"
        write_lines(corpus, lines)
        # vocab_size is a soft limit: a small corpus gets the units it can support.
        prefix = out_dir / f"bpe.tmp.{os.getpid()}"  # renamed into place once complete
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, num_threads=1, hard_vocab_limit=False,
            input_sentence_size=10_000_000, shuffle_input_sentence=True, minloglevel=2)
        os.replace(f"{prefix}.model", out_dir / "bpe.model")
        os.remove(f"{prefix}.vocab")
        corpus.unlink()
        sp = spm.SentencePieceProcessor(model_file=str(out_dir / "bpe.model"))
        units = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_unknown(i) or sp.is_control(i))]
    else:
        raise ValueError(f"unknown token_type {token_type!r} (bpe or char)")
    tokens = [BLANK, UNK, *units, SOS_EOS, MASK]
    write_lines(out_dir / "tokens.txt", tokens)
    write_lines(out_dir / "token_type", [token_type])
    logging.info("%s: %d tokens (%s, %d units)", out_dir / "tokens.txt", len(tokens), token_type, len(units))
    return tokens



class Tokenizer:
    """Text <-> ids for a token-list dir written by build_token_list."""

    def __init__(self, token_dir):
        token_dir = Path(token_dir)
        self.tokens = (token_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()
        self.token_type = (token_dir / "token_type").read_text().strip()
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        for sym in RESERVED:
            if sym not in self.ids:
                raise ValueError(f"{token_dir / 'tokens.txt'}: reserved symbol {sym} missing")
        self.blank, self.unk, self.sos_eos, self.mask = (self.ids[s] for s in RESERVED)
        self.sp = spm.SentencePieceProcessor(model_file=str(token_dir / "bpe.model")) if self.token_type == "bpe" else None

    def __len__(self):
        return len(self.tokens)

    def text2tokens(self, text):
        if self.sp is not None:
            return self.sp.encode(text, out_type=str)
        return [SPACE if c == " " else c for c in " ".join(text.split())]

    def text2ids(self, text):
        return [self.ids.get(t, self.unk) for t in self.text2tokens(text)]

    def ids2text(self, ids):
        special = {self.blank, self.sos_eos, self.mask}
        pieces = [self.tokens[i] for i in ids if i not in special]
        if self.sp is not None:
            return "".join(pieces).replace("\u2581", " ").strip()
        return "".join(" " if p == SPACE else p for p in pieces).strip()
