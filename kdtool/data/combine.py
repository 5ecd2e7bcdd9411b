"""Combine data dirs into one, as Kaldi's utils/combine_data.sh (e.g. LibriSpeech's 960 h from its
three training subsets).

utt2spk is required in every input. Each other per-utterance file (wav.scp, text, segments,
utt2num_frames, feats.scp) is combined when every input has it; one that only some inputs have is left
out, with a warning (e.g. text: the combined dir is then untranscribed). segments is the exception:
with it wav.scp is keyed by recording, so segmented and unsegmented dirs cannot be combined. spk2utt is
regenerated; every file is sorted (LC_ALL=C) and written atomically. An id in two inputs is an error
naming both, as a speaker in several inputs is not (spk2utt then lists all of its utterances). Each
unsegmented input is validated first: a broken one would make a broken union.
"""
import logging
from pathlib import Path

from kdtool.data.datadir import DataDir, DataDirError, spk2utt_from_utt2spk, write_table
from kdtool.data.validate import validate_data_dir

FILES = ("wav.scp", "text", "utt2spk", "segments", "utt2num_frames", "feats.scp")


def shared_files(dirs):
    """The files to combine: those every input has. utt2spk must be among them."""
    names = []
    for name in FILES:
        have = [d for d in dirs if d.has(name)]
        if len(have) == len(dirs):
            names.append(name)
        elif name == "utt2spk":
            missing = next(d for d in dirs if not d.has(name))
            raise DataDirError(f"{missing.path / name}: file not found (every input needs utt2spk)")
        elif name == "segments" and have:
            without = next(d for d in dirs if not d.has(name))
            raise DataDirError(f"{have[0].path / name} exists but {without.path / name} does not: a segmented "
                               "and an unsegmented dir cannot be combined (their wav.scp have different keys)")
        elif have:
            logging.warning("%s: only in %s of the %d inputs (%s); left out of the combined dir", name, len(have),
                            len(dirs), ", ".join(str(d.path) for d in have))
    return names


def combine_tables(dirs, name, what="utterance"):
    """One file's entries from every input; an id (``what``) in two inputs is a DataDirError naming both."""
    table, source = {}, {}
    for d in dirs:
        for key, value in d.read(name, allow_empty=(name == "text")).items():
            if key in table:
                raise DataDirError(f"{what} {key} is in both {source[key] / name} and {d.path / name}: "
                                   "ids must be unique across the combined dirs")
            table[key], source[key] = value, d.path
    return table


def combine_data_dirs(out, inputs):
    """Write the union of the data dirs ``inputs`` into ``out``; returns the combined DataDir."""
    out = Path(out)
    dirs = [DataDir(p) for p in inputs]
    if not dirs:
        raise DataDirError("no data dirs to combine")
    seen = set()
    for d in dirs:
        if not d.path.is_dir():
            raise DataDirError(f"{d.path}: data directory does not exist")
        if d.path.resolve() == out.resolve():
            raise DataDirError(f"{d.path}: an input cannot be the combined dir itself")
        if d.path.resolve() in seen:
            raise DataDirError(f"{d.path}: given twice")
        seen.add(d.path.resolve())
        if not d.has("segments"):  # (validate_data_dir knows no segments: wav.scp is keyed by recording there)
            validate_data_dir(d.path, quiet=True)  # a broken input would make a broken union, with exit 0
    names = sorted(shared_files(dirs), key=lambda n: n != "utt2spk")  # a duplicate utterance shows in utt2spk
    by_recording = "segments" in names  # then wav.scp is keyed by recording
    # every check before anything is written
    tables = {name: combine_tables(dirs, name, "recording" if name == "wav.scp" and by_recording else "utterance")
              for name in names}
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # a file of an earlier combination that is not made now would not match
        if name not in tables:
            (out / name).unlink(missing_ok=True)
    for name, table in tables.items():
        write_table(out / name, table)
    write_table(out / "spk2utt", spk2utt_from_utt2spk(tables["utt2spk"]))
    logging.info("%s: %d utterances from %s", out, len(tables["utt2spk"]), ", ".join(str(d.path) for d in dirs))
    return DataDir(out)
