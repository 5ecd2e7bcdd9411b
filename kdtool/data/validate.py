"""Check a data dir against every rule of Kaldi's format (utils/validate_data_dir.sh), plus, on
request, its audio (every sample read: finite, as many as the header says, at the right rate) and its
features (readable, one dimension, as many frames as utt2num_frames says, finite).

Collects all problems (up to a limit) and raises one DataDirError listing them, each naming
the file, the utterance and what is wrong.
"""
import logging

from kdtool.data.audio import AudioError, load_audio
from kdtool.data.datadir import DataDir, DataDirError, c_sorted, spk2utt_from_utt2spk

MAX_REPORTED = 20


def validate_data_dir(path, check_audio=False, sample_rate=None, require_text=False, check_feats=False,
                      cmd_timeout=None, quiet=False):
    """Raise DataDirError if ``path`` breaks a rule; return the DataDir otherwise. ``cmd_timeout``:
    seconds a wav.scp command may run (kdtool.data.audio)."""
    d = DataDir(path)
    if not d.path.is_dir():
        raise DataDirError(f"{d.path}: data directory does not exist")
    errors = []

    def err(msg):
        errors.append(msg)

    need = ["utt2spk", "spk2utt"] + ([] if d.has("feats.scp") else ["wav.scp"]) + (["text"] if require_text else [])
    missing = [n for n in need if not d.has(n)]
    if missing:
        raise DataDirError(f"{d.path}: missing {', '.join(missing)}")

    tables = {}
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "feats.scp", "utt2num_frames"):
        if d.has(name):
            table = d.read(name, allow_empty=(name == "text"))  # raises on duplicates
            tables[name] = table
            keys = list(table)
            if keys != c_sorted(keys):
                first = next(k for a, k in zip(c_sorted(keys), keys) if a != k)
                err(f"{d.path / name}: not sorted with LC_ALL=C (first out of place: {first}); "
                    f"run: python -m kdtool.bin.fix_data_dir {d.path}")

    utt2spk = tables["utt2spk"]
    if not utt2spk:
        raise DataDirError(f"{d.path / 'utt2spk'}: no utterances: the data dir is empty (did data preparation fail?)")
    for name in ("wav.scp", "text", "feats.scp", "utt2num_frames"):
        if name in tables:
            for utt in c_sorted(set(utt2spk) - set(tables[name])):
                err(f"{d.path / name}: utterance {utt} is in utt2spk but not in {name}")
            for utt in c_sorted(set(tables[name]) - set(utt2spk)):
                err(f"{d.path / 'utt2spk'}: utterance {utt} is in {name} but not in utt2spk")

    for utt, spk in utt2spk.items():
        if not utt.startswith(spk):
            err(f"{d.path / 'utt2spk'}: utterance {utt}: speaker id {spk} is not a prefix of the utterance id")
    expected = spk2utt_from_utt2spk(utt2spk)
    if tables["spk2utt"] != expected:
        bad = c_sorted(set(expected) ^ set(tables["spk2utt"]) |
                       {s for s in expected if tables["spk2utt"].get(s) != expected[s]})
        err(f"{d.path / 'spk2utt'}: does not match utt2spk for speaker {bad[0]}; "
            f"run: python -m kdtool.bin.fix_data_dir {d.path}")

    for utt, words in tables.get("text", {}).items():
        if not words.strip():
            err(f"{d.path / 'text'}: utterance {utt} has an empty transcript")

    for utt, n in tables.get("utt2num_frames", {}).items():
        if not n.isdigit() or int(n) == 0:
            err(f"{d.path / 'utt2num_frames'}: utterance {utt}: bad frame count {n!r}")

    if check_audio and "wav.scp" in tables:
        for utt, entry in tables["wav.scp"].items():
            if len(errors) >= MAX_REPORTED:
                break
            try:
                _, rate = load_audio(entry, timeout=cmd_timeout)
            except AudioError as e:
                err(f"{d.path / 'wav.scp'}: utterance {utt}: {e}")
                continue
            if sample_rate and rate != sample_rate:
                err(f"{d.path / 'wav.scp'}: utterance {utt}: sample rate {rate} Hz, expected {sample_rate} Hz")

    if check_feats and "feats.scp" in tables and not errors:
        from kdtool.features.reader import iter_feats  # features sit above data; only this check needs them
        try:
            for _ in iter_feats(d.path / "feats.scp"):
                pass
        except DataDirError as e:
            err(str(e))

    if errors:
        more = f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise DataDirError(f"{d.path}: {len(errors)} problem(s):\n  " + "\n  ".join(errors[:MAX_REPORTED]) + more)
    (logging.debug if quiet else logging.info)("%s: valid (%d utterances, %d speakers%s)", d.path, len(utt2spk),
                                               len(tables["spk2utt"]), "" if "text" in tables else ", untranscribed")
    return d
