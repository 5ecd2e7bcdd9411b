"""A Kaldi-style data directory: one utterance per line in each file, keyed by utterance id.

    wav.scp   <utt> <path to audio, or a shell command ending in '|' that writes wav to stdout>
    text      <utt> <transcript>          (absent for untranscribed speech)
    utt2spk   <utt> <speaker>             (the speaker id is a prefix of the utterance id)
    spk2utt   <speaker> <utt> <utt> ...   (derived from utt2spk)
    feats.scp, utt2num_frames             (after feature extraction)

Every file is sorted by key in byte order, as ``LC_ALL=C sort`` does.
"""
from pathlib import Path

from kdtool.errors import KdtoolError
from kdtool.utils.atomic import write_lines

UTT_FILES = ("wav.scp", "text", "utt2spk", "feats.scp", "utt2num_frames")


BOM = "\ufeff"


class DataDirError(KdtoolError, ValueError):
    """Bad content in a data directory; the message names the file, the utterance and the problem."""


def c_sorted(keys):
    """Keys in the order of ``LC_ALL=C sort``: plain byte order."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def read_text_lines(path):
    """The lines of a UTF-8 text file; a DataDirError naming the file and line for bytes that are
    not UTF-8 or a leading byte-order mark (both break ids silently in other tools)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data[:e.start].count(b"\n") + 1
        raise DataDirError(f"{path}:{lineno}: not UTF-8 (byte 0x{data[e.start]:02x}); convert the file to UTF-8, "
                           f"e.g. iconv -f latin1 -t utf-8") from None
    if text.startswith(BOM):
        raise DataDirError(f"{path}:1: starts with a byte-order mark (U+FEFF), which would become part of the "
                           f"first id; remove it: python -m kdtool.bin.fix_data_dir {path.parent}")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # universal newlines, as open() does
    return lines[:-1] if lines[-1] == "" else lines


def read_table(path, allow_empty=False):
    """Read ``key value`` lines into a dict (insertion order = file order).

    Raises DataDirError naming the file and line for a duplicate key, text that is not UTF-8, or,
    unless ``allow_empty``, a key with no value.
    """
    path = Path(path)
    table = {}
    for lineno, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            raise DataDirError(f"{path}:{lineno}: empty line")
        parts = line.split(maxsplit=1)
        key, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        if key in table:
            raise DataDirError(f"{path}:{lineno}: utterance {key}: duplicate id (first seen earlier in the file)")
        if not value and not allow_empty:
            raise DataDirError(f"{path}:{lineno}: {key}: no value after the id")
        table[key] = value
    return table


def write_table(path, table):
    """Write a dict as sorted ``key value`` lines, atomically."""
    write_lines(path, (f"{k} {table[k]}" for k in c_sorted(table)))


def spk2utt_from_utt2spk(utt2spk):
    spk2utt = {}
    for utt in c_sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utt.items()}


class DataDir:
    """A data directory on disk; files are read lazily and cached."""

    def __init__(self, path):
        self.path = Path(path)
        self._cache = {}

    def __repr__(self):
        return f"DataDir({str(self.path)!r})"

    def has(self, name):
        return (self.path / name).is_file()

    def read(self, name, allow_empty=False):
        if name not in self._cache:
            if not self.has(name):
                raise DataDirError(f"{self.path / name}: file not found")
            self._cache[name] = read_table(self.path / name, allow_empty=allow_empty)
        return self._cache[name]

    @property
    def utts(self):
        """Utterance ids in sorted order (from utt2spk)."""
        return c_sorted(self.read("utt2spk"))

    @property
    def transcribed(self):
        return self.has("text")

    @staticmethod
    def write(path, wav_scp, utt2spk, text=None, extra=None):
        """Create a data dir from dicts; spk2utt is derived. ``extra`` maps file name -> dict."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_table(path / "wav.scp", wav_scp)
        write_table(path / "utt2spk", utt2spk)
        write_table(path / "spk2utt", spk2utt_from_utt2spk(utt2spk))
        if text is not None:
            write_table(path / "text", text)
        for name, table in (extra or {}).items():
            write_table(path / name, table)
        return DataDir(path)
