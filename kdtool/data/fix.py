"""Repair what can be repaired in a data dir (utils/fix_data_dir.sh): remove a byte-order mark, sort
every file, keep only utterances present in all files and with a non-empty transcript, rebuild spk2utt.

Duplicate ids are not guessed at: they raise DataDirError. The originals go to ``.backup/``. A dir
that still breaks a rule afterwards (e.g. a speaker id that is no prefix of its utterances) is a
DataDirError too, so that a script calling fix_data_dir stops there.
"""
import logging
import shutil

from kdtool.data.datadir import (BOM, UTT_FILES, DataDir, DataDirError, c_sorted, spk2utt_from_utt2spk,
                                 write_table)
from kdtool.data.validate import validate_data_dir


def fix_data_dir(path):
    """Fix ``path`` in place; return the number of utterances dropped."""
    d = DataDir(path)
    if not d.has("utt2spk"):
        raise DataDirError(f"{d.path / 'utt2spk'}: file not found")
    backup = d.path / ".backup"
    backup.mkdir(exist_ok=True)
    names = [name for name in UTT_FILES + ("spk2utt",) if d.has(name)]
    for name in names:
        shutil.copy2(d.path / name, backup / name)
    for name in names:
        raw = (d.path / name).read_bytes()
        if raw.startswith(BOM.encode()):
            logging.warning("%s: removing a byte-order mark (original in %s)", d.path / name, backup)
            (d.path / name).write_bytes(raw[len(BOM.encode()):])
    tables = {name: d.read(name, allow_empty=(name == "text")) for name in UTT_FILES if d.has(name)}
    keep = set(tables["utt2spk"])
    for name, table in tables.items():
        keep &= set(table)
    if "text" in tables:
        empty = {u for u, t in tables["text"].items() if not t.strip()}
        for utt in c_sorted(empty & keep):
            logging.warning("%s: dropping utterance %s: empty transcript", d.path / "text", utt)
        keep -= empty
    total = len(set().union(*tables.values()))
    dropped = total - len(keep)

    for name, table in tables.items():
        write_table(d.path / name, {u: v for u, v in table.items() if u in keep})
    utt2spk = {u: s for u, s in tables["utt2spk"].items() if u in keep}
    write_table(d.path / "spk2utt", spk2utt_from_utt2spk(utt2spk))
    if dropped:
        logging.warning("%s: kept %d utterances, dropped %d not in every file (originals in %s)",
                        d.path, len(keep), dropped, backup)
    else:
        logging.info("%s: %d utterances, files sorted", d.path, len(keep))
    try:
        validate_data_dir(d.path, quiet=True)
    except DataDirError as e:
        raise DataDirError(f"{d.path}: still not a valid data dir after fixing (originals in {backup}); "
                           f"fix these by hand: {e}") from None
    return dropped
