"""Where a stage-4 dump came from, and whether it still matches its teacher and data.

Soft-label (``soft_labels.json``) and N-best (``nbest.json``) metadata record::

    teacher_sha256      sha256 of the teacher's model.pth (the weights it was made with)
    data                the data dir it was made from (absolute path)
    feats_scp_sha256    sha256 of that dir's feats.scp (ark paths and offsets: features recomputed
                        elsewhere or to another size change it; the arks' bytes are not read)
    text_sha256         sha256 of that dir's text, for types that read the transcripts; else null

Stage 4 (``check_up_to_date``, the entry points' ``--check``) redoes a dump that is incomplete,
was made with other options, or whose teacher or data changed since; stage 5 (``check_dumps``)
refuses such a dump before training. A dump made before these were recorded (format_version 1)
is read with a warning that its provenance is unchecked, and redone by stage 4.

Only the standard library here: kd.sh runs ``--check`` for every dump, so it must start fast.
"""
import json
import logging
from pathlib import Path

from kdtool.errors import KdtoolError
from kdtool.utils.files import file_sha256

KEYS = ("teacher_sha256", "data", "feats_scp_sha256", "text_sha256")


class StaleDumpError(KdtoolError, ValueError):
    """A dump that does not match its teacher or data; the message names the dump, both values and the fix."""


def soft_label_options(type, topk, temperature):
    """The options a soft-label dump records and stage 4 compares (fb posteriors are made at T = 1)."""
    return {"type": type, "topk": topk or None,
            "temperature": 1.0 if type == "fb_posteriors" else float(temperature)}


def nbest_options(nbest, beam_size, ctc_weight):
    """The options an N-best dump records and stage 4 compares."""
    return {"nbest": nbest, "beam_size": beam_size, "ctc_weight": ctc_weight}


def record(teacher_dir, data_dir, uses_text):
    """The provenance entries of a dump of ``teacher_dir`` on ``data_dir``."""
    data = Path(data_dir)
    return {"teacher_sha256": file_sha256(Path(teacher_dir) / "model.pth"), "data": str(data.resolve()),
            "feats_scp_sha256": file_sha256(data / "feats.scp"),
            "text_sha256": file_sha256(data / "text") if uses_text else None}


def _short(h):
    return h[:16] if isinstance(h, str) else str(h)


class _Hashes:
    """sha256 of files, each computed once (a teacher's weights are compared with many dumps)."""

    def __init__(self):
        self._seen = {}

    def __call__(self, path):
        path = Path(path).resolve()
        if path not in self._seen:
            self._seen[path] = file_sha256(path) if path.is_file() else None
        return self._seen[path]


def mismatch(meta, teacher_dir, data_dir, hashes=None):
    """Why a dump's ``meta`` does not match ``teacher_dir`` / ``data_dir`` (either may be None:
    not checked), as one phrase naming both values; None when it matches."""
    hashes = hashes or _Hashes()
    checks = []
    if teacher_dir is not None:
        checks.append(("teacher_sha256", Path(teacher_dir) / "model.pth", "teacher weights"))
    if data_dir is not None:
        checks.append(("feats_scp_sha256", Path(data_dir) / "feats.scp", "features"))
        if meta.get("text_sha256"):
            checks.append(("text_sha256", Path(data_dir) / "text", "transcripts"))
    for key, path, what in checks:
        now = hashes(path)
        if now != meta[key]:
            return (f"made from other {what} than {path} ({key} {_short(meta[key])} in the dump, "
                    f"{_short(now) if now else 'missing'} now)")
    return None


def check_up_to_date(out_dir, meta_name, done_name, want, teacher_dir, data_dir):
    """Stage 4's skip test: None when ``out_dir`` is a complete dump (its merge wrote ``done_name``)
    made with the options in ``want`` from the current ``teacher_dir`` and ``data_dir``; else why not."""
    out = Path(out_dir)
    meta_path = out / meta_name
    if not (out / done_name).is_file() or not meta_path.is_file():
        return "incomplete" if out.exists() else "not made yet"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        return f"{meta_path} is not JSON ({e})"
    for key, value in want.items():
        if meta.get(key) != value:
            return f"made with {key} {meta.get(key)!r}, now {value!r}"
    if any(k not in meta for k in KEYS):
        return "made before dumps recorded their teacher's and data's sha256 (format_version 1)"
    return mismatch(meta, teacher_dir, data_dir)


def check_dumps(readers, teacher_dir, data_dirs):
    """Stage 5: refuse (StaleDumpError) any dump in ``readers`` (objects with ``dir`` and ``meta``)
    made by another teacher than ``teacher_dir`` (None: the teacher the dump names, if it is still
    there), or from data that changed since. A dump is checked against the student's data dir it
    was made from, or, made from another dir (e.g. a superset), against that one."""
    hashes = _Hashes()
    student_dirs = {Path(d).resolve(): Path(d) for d in data_dirs}
    for r in readers:
        meta = r.meta
        if any(k not in meta for k in KEYS):
            logging.warning("%s: made before dumps recorded their teacher's and data's sha256: its provenance is "
                            "unchecked (rerun stage 4 to record it)", r.dir)
            continue
        teacher = teacher_dir
        if teacher is None and (Path(meta["teacher"]) / "model.pth").is_file():
            teacher = meta["teacher"]
        data = student_dirs.get(Path(meta["data"]))
        if data is None and Path(meta["data"]).is_dir():
            data = Path(meta["data"])
        if data is None:
            logging.warning("%s: its data dir %s is gone: features and transcripts unchecked", r.dir, meta["data"])
        why = mismatch(meta, teacher, data, hashes)
        if why:
            raise StaleDumpError(f"{r.dir}: stale: {why}; rerun stage 4 (it redoes stale dumps) or delete {r.dir}")
