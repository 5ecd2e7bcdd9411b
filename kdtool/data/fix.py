"""Repair what can be repaired in a data dir (utils/fix_data_dir.sh): sort every file, keep only
utterances present in all files and with a non-empty transcript, rebuild spk2utt.

Duplicate ids are not guessed at: they raise DataDirError. The originals go to ``.backup/``.
"""
import logging
import shutil

from kdtool.data.datadir import UTT_FILES, DataDir, DataDirError, c_sorted, spk2utt_from_utt2spk, write_table


def fix_data_dir(path):
    """Fix ``path`` in place; return the number of utterances dropped."""
    d = DataDir(path)
    if not d.has("utt2spk"):
        raise DataDirError(f"{d.path / 'utt2spk'}: file not found")
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

    backup = d.path / ".backup"
    backup.mkdir(exist_ok=True)
    for name in list(tables) + ["spk2utt"]:
        if d.has(name):
            shutil.copy2(d.path / name, backup / name)
    for name, table in tables.items():
        write_table(d.path / name, {u: v for u, v in table.items() if u in keep})
    utt2spk = {u: s for u, s in tables["utt2spk"].items() if u in keep}
    write_table(d.path / "spk2utt", spk2utt_from_utt2spk(utt2spk))
    if dropped:
        logging.warning("%s: kept %d utterances, dropped %d not in every file (originals in %s)",
                        d.path, len(keep), dropped, backup)
    else:
        logging.info("%s: %d utterances, files sorted", d.path, len(keep))
    return dropped


