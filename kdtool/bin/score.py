"""Stage 7: score a decode dir against a reference data dir (WER, CER, RTF, size).

    python -m kdtool.bin.score --ref dump/fbank/test exp/teacher_ar/decode_ar_beam10_test

Reads ``text`` (hypotheses), ``decode_time`` and ``decode_info.json`` from the decode dir and
``text``, ``utt2num_frames`` from the reference dir; writes into the decode dir ``score.json``,
``alignment.txt`` (word level, sclite-style) and ``alignment_char.txt`` (character level), and
prints a one-line summary.
"""
import argparse
import json
import logging
from pathlib import Path

from kdtool.bin._common import run_main
from kdtool.data.datadir import read_table
from kdtool.features.frames import audio_seconds
from kdtool.scoring.wer import CER_CONVENTIONS, format_alignment, score
from kdtool.utils.atomic import atomic_open, write_lines

# Keys score.json always has, null when decode_info.json does not give them.
INFO_KEYS = ("model_dir", "method", "kind", "command", "params", "size_mb")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="reference data dir with text and utt2num_frames")
    p.add_argument("--cer_convention", default="espnet", choices=CER_CONVENTIONS,
                   help="espnet: spaces between words are <space> tokens (ESPnet's, jiwer's CER); "
                        "no_space: spaces left out")
    p.add_argument("decode_dir", help="decode dir with text, decode_time, decode_info.json")
    return p


def _seconds(path, utts, to_seconds):
    """Sum of ``to_seconds(value)`` over ``utts`` from the table at ``path``; None if there is no file."""
    if not path.is_file():
        logging.warning("%s not found: rtf set to null", path)
        return None
    table, total = read_table(path), 0.0
    for u in utts:
        if u not in table:
            raise ValueError(f"{path}: no entry for utterance {u}")
        try:
            total += to_seconds(table[u])
        except ValueError:
            raise ValueError(f"{path}: utterance {u}: not a number: {table[u]!r}") from None
    return total


def timing(ref_dir, decode_dir, utts):
    """(decode seconds, audio seconds, rtf) over ``utts``; None for what cannot be computed."""
    dec_s = _seconds(decode_dir / "decode_time", utts, float)
    audio_s = _seconds(ref_dir / "utt2num_frames", utts, audio_seconds)
    rtf = dec_s / audio_s if dec_s is not None and audio_s else None
    return dec_s, audio_s, rtf


def score_decode_dir(ref_dir, decode_dir, cer_convention="espnet"):
    """Score ``decode_dir`` against ``ref_dir``, write its score.json and alignments; return the dict."""
    ref_dir, decode_dir = Path(ref_dir), Path(decode_dir)
    ref = read_table(ref_dir / "text", allow_empty=True)
    hyp = read_table(decode_dir / "text", allow_empty=True)
    res = score(ref, hyp, cer_convention)

    info_file = decode_dir / "decode_info.json"
    info = dict.fromkeys(INFO_KEYS)
    if info_file.is_file():
        try:
            loaded = json.loads(info_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{info_file}: not valid JSON ({e})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{info_file}: expected a JSON object")
        info.update(loaded)
    else:
        logging.warning("%s not found: params, size_mb and the decode command set to null", info_file)
    # RTF over the decoded utterances: missing ones took no decoding time.
    dec_s, audio_s, rtf = timing(ref_dir, decode_dir, [u for u in ref if u in hyp])
    # Measured numbers come last so that no decode_info key can shadow them.
    result = {**info, **res.summary(), "rtf": rtf, "decode_seconds": dec_s, "audio_seconds": audio_s,
              "test_set": ref_dir.resolve().name, "ref_dir": str(ref_dir)}

    with atomic_open(decode_dir / "score.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    for name, pairs in (("alignment.txt", res.word_pairs), ("alignment_char.txt", res.char_pairs)):
        write_lines(decode_dir / name, (format_alignment(u, pairs[u]) + "\n" for u in pairs))
    return result


def main():
    args = get_parser().parse_args()
    r = score_decode_dir(args.ref, args.decode_dir, args.cer_convention)
    rtf = "n/a" if r["rtf"] is None else f"{r['rtf']:.4f}"
    print(f"{args.decode_dir}: WER {r['wer']:.2f}% (S {r['sub']} D {r['del']} I {r['ins']} / {r['n_words']} words), "
          f"CER {r['cer']:.2f}%, RTF {rtf}, {r['n_utts']} utts ({r['n_missing']} missing)")


if __name__ == "__main__":
    run_main(main)
