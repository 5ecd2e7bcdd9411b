"""Word and character error rates by Levenshtein alignment, with per-utterance alignments.

Word level splits on whitespace. Character level follows ESPnet's convention by default: the characters,
each space between words a ``<space>`` token (so a missed word boundary is an error, as jiwer's CER
counts it too); ``no_space`` (kdtool's earlier CER) leaves the spaces out, so Mandarin written with or
without spaces between words scores alike.
"""
import logging
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from kdtool.data.datadir import c_sorted

GAP = "***"
SPACE = "<space>"
CER_CONVENTIONS = ("espnet", "no_space")


@dataclass
class Counts:
    cor: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0

    @property
    def errors(self):
        return self.sub + self.dele + self.ins

    @property
    def n_ref(self):
        return self.cor + self.sub + self.dele

    def __iadd__(self, other):
        self.cor += other.cor
        self.sub += other.sub
        self.dele += other.dele
        self.ins += other.ins
        return self


def _distances(r, h):
    """d[i, j] = edit distance between r[:i] and h[:j] (int arrays); rows are vectorized: the
    diagonal/up moves first, then left moves (insertions) as a running minimum of t[k] - k, plus j."""
    n, m = len(r), len(h)
    d = np.empty((n + 1, m + 1), dtype=np.int64)
    d[0] = cols = np.arange(m + 1)
    for i in range(1, n + 1):
        t = np.empty(m + 1, dtype=np.int64)
        t[0] = i
        t[1:] = np.minimum(d[i - 1, :-1] + (h != r[i - 1]), d[i - 1, 1:] + 1)
        d[i] = np.minimum.accumulate(t - cols) + cols
    return d


def align(ref, hyp):
    """Minimum-edit alignment of two token lists.

    Returns ``(Counts, pairs)``; ``pairs`` lists ``(ref_token, hyp_token, op)`` with op one of C/S/D/I
    and None for the missing side. Ties between equally cheap alignments are broken as rapidfuzz
    (hence jiwer) does, so the S/D/I counts agree with it: a common prefix and suffix are matched
    first, then the rest is backtracked from the end preferring deletion, then insertion, then the
    diagonal (Hyyro's bit-parallel recovery rule, written on the full matrix).
    """
    n, m = len(ref), len(hyp)
    pre = 0
    while pre < min(n, m) and ref[pre] == hyp[pre]:
        pre += 1
    suf = 0
    while suf < min(n, m) - pre and ref[n - 1 - suf] == hyp[m - 1 - suf]:
        suf += 1
    vocab = {}
    r = np.array([vocab.setdefault(t, len(vocab)) for t in ref[pre:n - suf]], dtype=np.int64)
    h = np.array([vocab.setdefault(t, len(vocab)) for t in hyp[pre:m - suf]], dtype=np.int64)
    d = _distances(r, h)

    ops = []  # from the end, as (op, steps back in ref, steps back in hyp)
    i, j = len(r), len(h)
    while i and j:
        if d[i, j] == d[i - 1, j] + 1:
            ops.append(("D", 1, 0))
            i -= 1
        # rapidfuzz's insertion test: ref[:i] is cheaper than ref[:i-1] against hyp[:j-1].
        elif j > 1 and d[i - 1, j - 1] == d[i, j - 1] + 1:
            ops.append(("I", 0, 1))
            j -= 1
        else:
            ops.append(("C" if r[i - 1] == h[j - 1] else "S", 1, 1))
            i, j = i - 1, j - 1
    ops += [("D", 1, 0)] * i + [("I", 0, 1)] * j
    ops = [("C", 1, 1)] * pre + ops[::-1] + [("C", 1, 1)] * suf

    pairs, i, j = [], 0, 0
    for op, di, dj in ops:
        pairs.append((ref[i] if di else None, hyp[j] if dj else None, op))
        i, j = i + di, j + dj
    return Counts(*(sum(p[2] == op for p in pairs) for op in "CSDI")), pairs


def words(text):
    return text.split()


def chars(text, convention="espnet"):
    """The character tokens of ``text`` under a CER convention (see the module doc)."""
    if convention == "no_space":
        return list("".join(text.split()))
    if convention != "espnet":
        raise ValueError(f"unknown CER convention {convention!r} (one of {', '.join(CER_CONVENTIONS)})")
    return [SPACE if ch == " " else ch for ch in " ".join(text.split())]


@dataclass
class ScoreResult:
    word: Counts = field(default_factory=Counts)
    char: Counts = field(default_factory=Counts)
    n_utts: int = 0
    n_sent_err: int = 0
    cer_convention: str = "espnet"
    missing: list = field(default_factory=list)
    word_pairs: dict = field(default_factory=dict)  # utt -> aligned (ref, hyp, op) word pairs
    char_pairs: dict = field(default_factory=dict)

    def summary(self):
        """The numbers score.json reports; rates are percentages."""
        w, c = self.word, self.char
        return {
            "wer": 100.0 * w.errors / w.n_ref, "cer": 100.0 * c.errors / c.n_ref,
            "sentence_error_rate": 100.0 * self.n_sent_err / self.n_utts,
            "n_utts": self.n_utts, "n_missing": len(self.missing), "n_sentence_errors": self.n_sent_err,
            "n_words": w.n_ref, "cor": w.cor, "sub": w.sub, "del": w.dele, "ins": w.ins,
            "n_chars": c.n_ref, "char_cor": c.cor, "char_sub": c.sub, "char_del": c.dele, "char_ins": c.ins,
            "cer_convention": self.cer_convention,
        }


def score(ref, hyp, cer_convention="espnet"):
    """Score hypotheses ``{utt: text}`` against references ``{utt: text}`` (characters under
    ``cer_convention``, see the module doc).

    A reference utterance without hypothesis is scored as all deletions (and listed in
    ``missing``); a hypothesis without reference, or an empty reference, is a ValueError.
    """
    extra = [u for u in hyp if u not in ref]
    if extra:
        raise ValueError(f"hypothesis for utterance {extra[0]} has no reference"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    chars(".", cer_convention)  # an unknown convention fails before any work
    res = ScoreResult(cer_convention=cer_convention)
    for utt in c_sorted(ref):
        if not ref[utt].strip():
            raise ValueError(f"utterance {utt}: empty reference")
        if utt not in hyp:
            res.missing.append(utt)
        text = hyp.get(utt, "")
        wc, res.word_pairs[utt] = align(words(ref[utt]), words(text))
        cc, res.char_pairs[utt] = align(chars(ref[utt], cer_convention), chars(text, cer_convention))
        res.word += wc
        res.char += cc
        res.n_utts += 1
        res.n_sent_err += wc.errors > 0
    if res.missing:
        logging.warning("%d of %d utterances have no hypothesis (scored as deletions), e.g. %s",
                        len(res.missing), res.n_utts, ", ".join(res.missing[:5]))
    return res


def _width(s):
    """Terminal columns of ``s``: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _pad(s, width):
    return s + " " * (width - _width(s))


def format_alignment(utt, pairs):
    """One sclite-style block: id, Scores, then REF/HYP/EVAL rows in aligned columns."""
    counts = {op: sum(p[2] == op for p in pairs) for op in "CSDI"}
    ref_row, hyp_row, eval_row = [], [], []
    for r, h, op in pairs:
        r, h = r or GAP, h or GAP
        w = max(_width(r), _width(h))
        ref_row.append(_pad(r, w))
        hyp_row.append(_pad(h, w))
        eval_row.append(_pad("" if op == "C" else op, w))
    return "\n".join([
        f"id: {utt}",
        "Scores: (#C #S #D #I) {C} {S} {D} {I}".format(**counts),
        ("REF:  " + " ".join(ref_row)).rstrip(),
        ("HYP:  " + " ".join(hyp_row)).rstrip(),
        ("EVAL: " + " ".join(eval_row)).rstrip(),
    ])
