"""Synthesize the built-in English corpus offline: fortunes text, espeak-ng and flite voices.

Three steps, each rerunnable (``local/data.sh`` calls them in order):

    # 1. choose sentences, voices and prosody for every utterance (deterministic from --seed)
    python local/synth_corpus.py plan --seed 1 --vocab_size 1000 --n_train 3000 ... data/local/mini_en
    # 2. synthesize the audio, in parallel jobs (existing wavs are kept, so a killed run resumes)
    python local/synth_corpus.py synth --job 1 --nj 4 data/local/mini_en
    # 3. write the Kaldi data dirs data/{train,dev,test,test_unseen,untrans}
    python local/synth_corpus.py datadirs data/local/mini_en data

Sets: ``train`` and ``untrans`` (the untranscribed pool: no ``text``) use training voices;
``dev`` and ``test`` use training voices on sentences never seen in training; ``test_unseen``
uses held-out voices on unseen sentences; ``train_teacher`` (with ``--n_teacher_train N``) is the
first N utterances of the stream that ``train`` and ``untrans`` are cut from. Sentences are clauses of the fortunes whose words are
all among the ``vocab_size`` most frequent words, so a small model can learn the vocabulary.
"""
import argparse
import collections
import csv
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from kdtool.data.datadir import DataDir, write_table
from kdtool.utils.atomic import atomic_path, write_lines
from kdtool.utils.log import setup_logging

FORTUNES = Path("/usr/share/games/fortunes")
SETS = ("train", "dev", "test", "test_unseen", "untrans", "train_teacher")
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# espeak-ng variants that are not speech a listener would transcribe (whispers, effects, robots).
ESPEAK_SKIP = {"whisper", "whisperf", "croak", "Demonic", "Mr serious", "fast", "UniRobot", "anikaRobot",
               "announcer", "Tweaky"}
FLITE_VOICES = {"kal16": (85, 120), "awb": (90, 130), "rms": (80, 115), "slt": (150, 200)}  # f0 mean range, Hz
PLAN_FIELDS = ["utt", "set", "voice", "engine", "spec", "rate", "pitch", "gain", "pad_start", "pad_end", "text"]


# ---------------------------------------------------------------------------- text
def fortune_clauses(min_words, max_words):
    """Distinct clauses of the plain-ASCII fortune files, normalized to upper-case words."""
    files = sorted(p for p in FORTUNES.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8"))
    if not files:
        sys.exit(f"synth_corpus.py: no fortune files in {FORTUNES} (apt-get install fortunes)")
    clauses = set()
    for path in files:
        try:
            text = path.read_text(encoding="ascii")
        except UnicodeDecodeError:
            continue  # the non-English collections
        for entry in text.split("\n%\n"):
            body = " ".join(ln.strip() for ln in entry.splitlines() if not ln.strip().startswith("--"))
            for clause in re.split(r"(?<=[.!?;:])\s+|,\s+", body):
                if re.search(r"[^A-Za-z' ,.;:!?-]", clause):
                    continue  # digits and symbols would be read aloud in ways the transcript cannot tell
                words = [w.strip("'") for w in re.sub(r"[^A-Za-z' ]", " ", clause).upper().split()]
                words = [w for w in words if w]
                if min_words <= len(words) <= max_words:
                    clauses.add(" ".join(words))
    return sorted(clauses)


def restrict_vocabulary(clauses, vocab_size):
    counts = collections.Counter(w for c in clauses for w in c.split())
    vocab = {w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:vocab_size]}
    return [c for c in clauses if all(w in vocab for w in c.split())], vocab


# ---------------------------------------------------------------------------- voices
def all_voices():
    """(speaker id, engine, spec) for every voice: espeak-ng variants spread over accents, flite."""
    variant_dir = next(Path("/usr/lib").glob("*/espeak-ng-data/voices/!v"), None)
    if variant_dir is None:
        sys.exit("synth_corpus.py: espeak-ng voice variants not found under /usr/lib/*/espeak-ng-data "
                 "(apt-get install espeak-ng)")
    variants = sorted(p.name for p in variant_dir.iterdir())
    variants = [v for v in variants if v not in ESPEAK_SKIP and " " not in v]
    voices = [(f"espk{i:03d}", "espeak", f"{ESPEAK_ACCENTS[i % len(ESPEAK_ACCENTS)]}+{v}")
              for i, v in enumerate(variants)]
    voices += [(f"flite{i:02d}", "flite", name) for i, name in enumerate(sorted(FLITE_VOICES))]
    return voices


# ---------------------------------------------------------------------------- plan
def make_plan(args):
    """Every utterance's sentence, voice and prosody. Each set draws from a random stream of its own,
    so dev, test and test_unseen are the same whatever the training sizes are; train, untrans and the
    teachers' training set are cuts of one stream of utterances (utterance k is the same audio in
    every corpus): train = stream[:n_train], untrans = stream[n_train:n_train + n_untrans],
    train_teacher = stream[:n_teacher_train]. So a corpus made for students holds exactly the
    audio a teacher trained on a larger cut of it heard."""
    clauses, vocab = restrict_vocabulary(fortune_clauses(args.min_words, args.max_words), args.vocab_size)
    random.Random(args.seed).shuffle(clauses)
    n_eval = {"dev": args.n_dev, "test": args.n_test, "test_unseen": args.n_test_unseen}
    if sum(n_eval.values()) >= len(clauses):
        sys.exit(f"synth_corpus.py: only {len(clauses)} sentences with vocab_size={args.vocab_size}; "
                 f"raise --vocab_size or lower the dev/test sizes")
    sentences, start = {}, 0
    for name, n in n_eval.items():  # evaluation sentences are distinct and never used elsewhere
        sentences[name], start = clauses[start:start + n], start + n
    pool = clauses[start:]  # the training stream cycles through what is left (other voices each time)
    n_stream = max(args.n_train + args.n_untrans, args.n_teacher_train)
    sentences["stream"] = [pool[k % len(pool)] for k in range(n_stream)]

    voices = all_voices()
    random.Random(args.seed).shuffle(voices)
    heldout, seen = sorted(voices[:args.n_heldout_voices]), sorted(voices[args.n_heldout_voices:])
    rows = []
    for name, prefix in (("stream", "s"), ("dev", "d"), ("test", "t"), ("test_unseen", "u")):
        rng = random.Random(f"{args.seed}-{name}")
        pool_voices = heldout if name == "test_unseen" else seen
        for i, text in enumerate(sentences[name]):
            spk, engine, spec = pool_voices[(i + rng.randrange(len(pool_voices))) % len(pool_voices)]
            if engine == "espeak":
                rate, pitch = rng.randint(130, 185), rng.randint(25, 75)  # words/min, 0-99
            else:
                rate, pitch = round(rng.uniform(0.85, 1.2), 2), rng.randint(*FLITE_VOICES[spec])  # stretch, f0
            if name == "stream":
                sets = ["train"] if i < args.n_train else ["untrans"] if i < args.n_train + args.n_untrans else []
                sets += ["train_teacher"] if i < args.n_teacher_train else []
            else:
                sets = [name]
            rows.append(dict(utt=f"{spk}-{prefix}{i:06d}", set=",".join(sets), voice=spk, engine=engine, spec=spec,
                             rate=rate, pitch=pitch, gain=rng.randint(1, 10),
                             pad_start=round(rng.uniform(0.05, 0.3), 2), pad_end=round(rng.uniform(0.1, 0.4), 2),
                             text=text))
    out = Path(args.dir)
    old_plan = read_plan(out) if (out / "plan.tsv").exists() else None
    if old_plan is not None and old_plan != [{k: str(v) for k, v in r.items()} for r in rows]:
        # Wavs are named by utterance id, which a new plan gives to other sentences.
        logging.warning("%s: the plan changed (other options); removing the wavs of the old plan", out)
        shutil.rmtree(out / "wav", ignore_errors=True)
    with atomic_path(out / "plan.tsv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, PLAN_FIELDS, delimiter="\t")
            w.writeheader()
            w.writerows(rows)
    write_lines(out / "vocab.txt", sorted(vocab))
    write_lines(out / "voices.tsv", [f"{s}\t{e}\t{v}\t{'heldout' if (s, e, v) in heldout else 'train'}"
                                     for s, e, v in sorted(voices)])
    counts = collections.Counter(s for r in rows for s in r["set"].split(","))
    logging.info("plan: %d sentences available with a %d-word vocabulary; %d voices (%d held out); %s",
                 len(clauses), len(vocab), len(voices), len(heldout), ", ".join(f"{s}={counts[s]}" for s in SETS))


def read_plan(d):
    with open(Path(d) / "plan.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ---------------------------------------------------------------------------- audio
def synthesize(row, wav):
    """Speak one planned utterance into ``wav`` (16 kHz, 16 bit, mono), atomically."""
    spoken = row["text"].lower()
    # -R: repeatable dither, so the same plan gives the same bytes (and silence is never digital zero,
    # whose log-mel energies would sit at the floor far from any real recording)
    post = ["-b", "16", "-c", "1"]
    effects = ["gain", "-n", f"-{row['gain']}", "rate", "-h", "16000", "pad", row["pad_start"], row["pad_end"]]
    with atomic_path(wav) as tmp, tempfile.TemporaryDirectory() as td:
        if row["engine"] == "espeak":
            raw = Path(td) / "raw.wav"
            subprocess.run(["espeak-ng", "-v", row["spec"], "-s", row["rate"], "-p", row["pitch"], "-w", str(raw),
                            spoken], check=True, capture_output=True)
        else:
            raw = Path(td) / "raw.wav"
            subprocess.run(["flite", "-voice", row["spec"], "--setf", f"duration_stretch={row['rate']}",
                            "--setf", f"int_f0_target_mean={row['pitch']}", "-t", spoken, "-o", str(raw)],
                           check=True, capture_output=True)
        subprocess.run(["sox", "-R", str(raw), *post, "-t", "wav", str(tmp), *effects], check=True, capture_output=True)


def synth(args):
    rows = read_plan(args.dir)
    mine = rows[args.job - 1::args.nj]
    wav_dir = Path(args.dir) / "wav"
    done = 0
    for row in tqdm(mine, desc=f"synth job {args.job}/{args.nj}", mininterval=5):
        wav = wav_dir / row["voice"] / f"{row['utt']}.wav"
        if wav.exists():
            continue  # written atomically, so complete
        try:
            synthesize(row, wav)
        except subprocess.CalledProcessError as e:
            sys.exit(f"synth_corpus.py: utterance {row['utt']}: {e.cmd[0]} failed: {e.stderr.decode().strip()}")
        done += 1
    logging.info("job %d/%d: %d utterances, %d synthesized now", args.job, args.nj, len(mine), done)


def datadirs(args):
    rows = read_plan(args.dir)
    wav_dir = Path(args.dir).resolve() / "wav"
    for name in SETS:
        sel = [r for r in rows if name in r["set"].split(",")]
        if not sel and name == "train_teacher":
            continue  # only made when asked for (--n_teacher_train)
        missing = [r["utt"] for r in sel if not (wav_dir / r["voice"] / f"{r['utt']}.wav").exists()]
        if missing:
            sys.exit(f"synth_corpus.py: {len(missing)} wavs of {name} not synthesized yet (first: {missing[0]}); "
                     f"rerun the synth step")
        DataDir.write(Path(args.data) / name,
                      wav_scp={r["utt"]: str(wav_dir / r["voice"] / f"{r['utt']}.wav") for r in sel},
                      utt2spk={r["utt"]: r["voice"] for r in sel},
                      text=None if name == "untrans" else {r["utt"]: r["text"] for r in sel})
        if name == "untrans":  # kept aside for analysis only: nothing in training reads it
            write_table(Path(args.dir) / "untrans_reference_text", {r["utt"]: r["text"] for r in sel})
    logging.info("wrote %s", ", ".join(f"{args.data}/{s}" for s in SETS))


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    pl = sub.add_parser("plan")
    pl.add_argument("dir")
    pl.add_argument("--seed", type=int, default=1)
    pl.add_argument("--vocab_size", type=int, default=1000, help="keep sentences within the N most frequent words")
    pl.add_argument("--min_words", type=int, default=3)
    pl.add_argument("--max_words", type=int, default=14)
    for name, n in (("train", 3000), ("dev", 300), ("test", 300), ("test_unseen", 300), ("untrans", 1000),
                    ("teacher_train", 0)):
        pl.add_argument(f"--n_{name}", type=int, default=n, help=f"utterances in {name}")
    pl.add_argument("--n_heldout_voices", type=int, default=10, help="voices used only in test_unseen")
    sy = sub.add_parser("synth")
    sy.add_argument("dir")
    sy.add_argument("--job", type=int, default=1)
    sy.add_argument("--nj", type=int, default=1)
    dd = sub.add_parser("datadirs")
    dd.add_argument("dir")
    dd.add_argument("data", help="where data/<set> dirs go")
    return p


def main():
    setup_logging()
    args = get_parser().parse_args()
    {"plan": make_plan, "synth": synth, "datadirs": datadirs}[args.step](args)


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    main()
