"""Stored soft labels: the one module that knows their bytes.

A soft-label dump dir (stage 4 output, stage 5 input) holds::

    soft_labels.json          metadata (below)
    soft_labels.<job>.ark     one Kaldi matrix per utterance, written by kaldiio (layout below)
    soft_labels.<job>.scp     <utt> <absolute ark path>:<byte offset>, one job's utterances
    soft_labels.scp           all jobs' scp lines, sorted (LC_ALL=C); written last, by merge_jobs

``soft_labels.json``:

    type            frame level, one row per teacher encoder frame:
                      "frame_posteriors" (the teacher's CTC posteriors) | "fb_posteriors" (CTC
                      forward-backward occupancies given the transcript, kdtool.kd.forward_backward)
                    token level, one row per transcript position (its tokens, then <eos>):
                      "token_posteriors" (an AR teacher's decoder distribution under teacher forcing)
                    lattice level, one row per node (t, u) of a transducer's output lattice, row
                    t * (U + 1) + u, always dense with 3 columns (blank, next label, all others):
                      "rnnt_lattice" (kdtool.kd.rnnt)
    topk            int K, or null for dense storage
    vocab_size      V: the length of tokens.txt (every CTC head has V outputs)
    temperature     the temperature the teacher's distributions were computed at (1.0: none)
    tokens_sha256   sha256 of the teacher's tokens.txt bytes; a student must use the same list
    teacher         path of the teacher's exp dir
    subsampling     teacher encoder frames per input (10 ms) frame, e.g. 4
    frame_shift_ms  input frame shift (10)
    teacher_sha256, data, feats_scp_sha256, text_sha256
                    where the dump came from (kdtool.utils.provenance): checked by stages 4 and 5
    format_version  2 (1: before compact top-k storage and provenance; still read)

Per utterance one matrix of N rows (frames, positions or lattice nodes):

    dense   float32 [N, V]  probabilities, rows sum to 1 (rnnt_lattice: [N, 3])
    top-k   the K most probable tokens of each row, most probable first, their probabilities
            renormalized to sum to 1, packed into B * K + K - 1 bytes per row, stored as a Kaldi
            compressed matrix of whole numbers 0..255 (kaldiio compression_method 6, "CM3": one byte
            per entry, read back exactly):
              bytes 0 .. B*K-1      the K token ids, B bytes each, little-endian: B = 1 for V <= 256,
                                    2 for V <= 65536, else 3
              bytes B*K .. B*K+K-2  c_1 .. c_{K-1}: round(255 * (p_1 + ... + p_j)), the cumulative
                                    probabilities in 1/255 steps; with c_0 = 0 and c_K = 255,
                                    p_j = (c_j - c_{j-1}) / 255: rows sum to exactly 1, every
                                    probability within 1/255 of the teacher's (top-8 of a 5000-token
                                    list: 23 bytes per row, against 64 as float32)
    top-k, format_version 1: float32 [N, 2K], columns 0..K-1 the ids (as floats), K..2K-1 their
            probabilities

A job writes its ark and scp under temporary names and renames them when complete (ark first,
then scp), and any stale merged ``soft_labels.scp`` is removed when a job starts, so a killed
stage never leaves an scp that a reader could take for complete.
"""
import json
import os
from pathlib import Path

import kaldiio
import numpy as np
import torch

from kdtool.data.datadir import c_sorted, read_table, write_table
from kdtool.errors import KdtoolError
from kdtool.utils.atomic import atomic_open
from kdtool.utils.files import file_sha256

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FRAME_TYPES = ("frame_posteriors", "fb_posteriors")
TYPES = (*FRAME_TYPES, "token_posteriors", "rnnt_lattice")
LATTICE_COLUMNS = 3  # blank, next label, all other labels
META_KEYS = ("type", "topk", "vocab_size", "temperature", "tokens_sha256", "teacher", "subsampling",
             "frame_shift_ms")
MAX_ID = 2 ** 24  # ids take at most 3 bytes (format 1: float32 holds every integer below this exactly)
PROB_STEPS = 255  # top-k probabilities in 1/255 steps: one byte each
COMPRESSED_BYTES = 6  # kaldiio compression_method kOneByteUnsignedInteger: "CM3", whole numbers 0..255 exact


class SoftLabelError(KdtoolError, ValueError):
    """A soft-label dump that cannot be used; the message names the file (and utterance)."""


class MissingSoftLabelError(SoftLabelError, KeyError):
    """An utterance that the dump does not hold (a KeyError too, for ``dict``-like callers)."""

    __str__ = Exception.__str__  # KeyError would quote the message


def tokens_sha256(tokens_path):
    return file_sha256(tokens_path)


def to_topk(probs, k):
    """The k most probable tokens per frame: (ids [T, k] long, probs [T, k] float), probs renormalized."""
    if not 1 <= k <= probs.shape[-1]:
        raise ValueError(f"topk={k} must be in 1..{probs.shape[-1]} (the vocabulary size)")
    p, ids = torch.topk(probs.float(), k, dim=-1)
    return ids, p / p.sum(-1, keepdim=True).clamp_min(1e-30)


def id_bytes(vocab_size):
    """Bytes per stored token id: 1 for up to 256 tokens, 2 up to 65536, else 3."""
    return 1 if vocab_size <= 256 else 2 if vocab_size <= 65536 else 3


def pack_topk(ids, probs, vocab_size):
    """Top-k rows (ids [N, K], probs [N, K] summing to 1) -> uint8 [N, B*K + K-1] (layout above)."""
    B, (N, K) = id_bytes(vocab_size), ids.shape
    shifts = 8 * torch.arange(B)
    id_cols = ((ids.long()[..., None] >> shifts) & 255).reshape(N, K * B)
    cum = torch.round(PROB_STEPS * probs.double().cumsum(-1)[:, :-1]).clamp(0, PROB_STEPS)
    return torch.cat([id_cols, cum.long()], dim=-1).to(torch.uint8).numpy()


def unpack_topk(mat, k, vocab_size):
    """The inverse of ``pack_topk``: (ids [N, K] long, probs [N, K] float32)."""
    B = id_bytes(vocab_size)
    b = torch.from_numpy(np.rint(mat)).long()
    ids = (b[:, :k * B].reshape(-1, k, B) << (8 * torch.arange(B))).sum(-1)
    edges = torch.cat([torch.zeros(len(b), 1, dtype=torch.long), b[:, k * B:],
                       torch.full((len(b), 1), PROB_STEPS)], dim=-1)
    return ids, edges.diff(dim=-1).float() / PROB_STEPS


def row_bytes(meta):
    """Stored entries per row: dense V (or 3) floats, top-k packed bytes (format 1: 2K floats)."""
    if meta["topk"] is None:
        return row_width(meta)
    k = meta["topk"]
    return 2 * k if meta.get("format_version") == 1 else id_bytes(meta["vocab_size"]) * k + k - 1


def check_meta(meta):
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise SoftLabelError(f"soft-label metadata lacks {missing}")
    if meta["type"] not in TYPES:
        raise SoftLabelError(f"soft-label type {meta['type']!r} is not one of {TYPES}")
    if not 1 < meta["vocab_size"] < MAX_ID:
        raise SoftLabelError(f"vocab_size {meta['vocab_size']} is outside 2..{MAX_ID - 1}")
    if meta["topk"] is not None and not 1 <= meta["topk"] <= meta["vocab_size"]:
        raise SoftLabelError(f"topk {meta['topk']} is outside 1..vocab_size ({meta['vocab_size']})")
    if meta["type"] == "rnnt_lattice" and meta["topk"] is not None:
        raise SoftLabelError("rnnt_lattice soft labels are stored dense (3 columns); topk must be null")
    return {**meta, "format_version": FORMAT_VERSION}


def row_width(meta):
    """The distribution each row holds: V tokens, or 3 lattice events."""
    return LATTICE_COLUMNS if meta["type"] == "rnnt_lattice" else meta["vocab_size"]


def job_paths(out_dir, job):
    d = Path(out_dir).resolve()  # absolute paths in the scp: readable from any working dir
    return d / f"soft_labels.{job}.ark", d / f"soft_labels.{job}.scp"


class SoftLabelWriter:
    """Write one job's soft labels: ``with SoftLabelWriter(dir, meta, job) as w: w.write(utt, probs)``.

    ``probs`` is a dense [T, V] probability matrix (tensor or array); it is stored dense or as
    top-k, as ``meta['topk']`` says. Nothing appears under the final names unless the block ends
    without an exception.
    """

    def __init__(self, out_dir, meta, job=1):
        self.out_dir, self.meta, self.job = Path(out_dir), check_meta(meta), job
        self.ark, self.scp = job_paths(out_dir, job)
        self.tmp_ark, self.tmp_scp = (p.with_name(f"{p.name}.tmp.{os.getpid()}") for p in (self.ark, self.scp))
        self._writer = None

    def __enter__(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Old outputs would no longer match the ark we are about to replace.
        for stale in (self.out_dir / "soft_labels.scp", self.scp):
            stale.unlink(missing_ok=True)
        with atomic_open(self.out_dir / "soft_labels.json") as f:
            json.dump(self.meta, f, indent=2, sort_keys=True)
        compressed = COMPRESSED_BYTES if self.meta["topk"] is not None else None
        self._writer = kaldiio.WriteHelper(f"ark,scp:{self.tmp_ark},{self.tmp_scp}", compression_method=compressed)
        return self

    def write(self, utt, probs):
        probs = torch.as_tensor(probs).detach().float().cpu()
        V = row_width(self.meta)
        if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != V:
            raise SoftLabelError(f"utterance {utt}: soft labels must be [T >= 1, V={V}], got {list(probs.shape)}")
        sums = probs.sum(-1)
        if probs.min() < 0 or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise SoftLabelError(f"utterance {utt}: rows are not probability distributions "
                                 f"(min {probs.min():.3g}, row sums {sums.min():.4g}..{sums.max():.4g}); "
                                 "log-probabilities or logits given?")
        if self.meta["topk"] is None:
            self._writer(utt, probs.numpy().astype(np.float32))
        else:
            packed = pack_topk(*to_topk(probs, self.meta["topk"]), self.meta["vocab_size"])
            self._writer(utt, packed.astype(np.float32))  # whole numbers 0..255, stored one byte each

    __call__ = write

    def __exit__(self, exc_type, exc, tb):
        try:
            self._writer.close()
            if exc_type is None:
                # The scp names the temporary ark; byte offsets stay valid after the rename.
                self.tmp_scp.write_text(self.tmp_scp.read_text().replace(f"{self.tmp_ark}:", f"{self.ark}:"))
                os.replace(self.tmp_ark, self.ark)
                os.replace(self.tmp_scp, self.scp)
        finally:
            for t in (self.tmp_ark, self.tmp_scp):
                t.unlink(missing_ok=True)
        return False


def merge_jobs(out_dir, nj):
    """Join ``soft_labels.<job>.scp`` (jobs 1..nj) into ``soft_labels.scp``; returns the utterance count."""
    out = Path(out_dir)
    if not (out / "soft_labels.json").is_file():
        raise SoftLabelError(f"{out / 'soft_labels.json'}: missing: no soft-label job has started; rerun the stage")
    table = {}
    for job in range(1, nj + 1):
        scp = job_paths(out, job)[1]
        if not scp.is_file():
            raise SoftLabelError(f"{scp}: missing: soft-label job {job} of {nj} did not finish; rerun the stage")
        part = read_table(scp)
        dup = sorted(set(part) & set(table))
        if dup:
            raise SoftLabelError(f"{scp}: utterance {dup[0]} is also in an earlier job ({len(dup)} duplicates)")
        table.update(part)
    write_table(out / "soft_labels.scp", table)
    return len(table)


class SoftLabelReader:
    """Read a merged dump: ``dense(utt)`` -> [T, V] tensor, ``sparse(utt)`` -> (ids [T, K], probs [T, K]).

    With ``tokens_path`` (the student's tokens.txt), the teacher's token list must be the same file.
    """

    def __init__(self, dump_dir, tokens_path=None):
        self.dir = Path(dump_dir)
        meta_path, scp = self.dir / "soft_labels.json", self.dir / "soft_labels.scp"
        for p in (meta_path, scp):
            if not p.is_file():
                raise SoftLabelError(f"{p}: missing: the soft-label dump is incomplete (rerun stage 4)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") not in READABLE_VERSIONS:
            raise SoftLabelError(f"{meta_path}: format_version {self.meta.get('format_version')} is not one of "
                                 f"{READABLE_VERSIONS} (made by a newer kdtool?); rerun stage 4")
        check_meta(self.meta)
        if tokens_path is not None and (ours := tokens_sha256(tokens_path)) != self.meta["tokens_sha256"]:
            raise SoftLabelError(f"{tokens_path}: token list differs from the one the soft labels in {self.dir} "
                                 f"were made with ({self.meta['teacher']}/tokens): sha256 {ours[:16]}... against "
                                 f"{self.meta['tokens_sha256'][:16]}... in {meta_path}; teacher and student must share tokens.txt")
        self.scp = read_table(scp)
        self.vocab_size, self.topk = self.meta["vocab_size"], self.meta["topk"]
        self.width = row_width(self.meta)  # entries of each row's distribution
        self.type = self.meta["type"]

    def __contains__(self, utt):
        return utt in self.scp

    def __len__(self):
        return len(self.scp)

    def keys(self):
        return c_sorted(self.scp)

    def _load(self, utt):
        if utt not in self.scp:
            raise MissingSoftLabelError(f"{self.dir / 'soft_labels.scp'}: no soft labels for utterance {utt}")
        ark = self.scp[utt].rsplit(":", 1)[0]
        try:
            mat = kaldiio.load_mat(self.scp[utt])
        except Exception as e:  # kaldiio raises ValueError, RuntimeError, AssertionError, OSError...
            raise SoftLabelError(f"{ark}: utterance {utt}: unreadable, truncated or corrupt ark "
                                 f"({type(e).__name__}: {e}); rerun stage 4") from None
        cols = row_bytes(self.meta)
        if mat.ndim != 2 or mat.shape[1] != cols or mat.shape[0] == 0:
            raise SoftLabelError(f"{ark}: utterance {utt}: matrix of shape {mat.shape}, expected [T, {cols}]")
        return mat

    def _topk(self, utt, mat):
        k = self.topk
        if self.meta["format_version"] == 1:
            mat = torch.from_numpy(np.array(mat, dtype=np.float32))
            ids, probs = mat[:, :k].long(), mat[:, k:]
        else:
            ids, probs = unpack_topk(mat, k, self.vocab_size)
        if ids.max() >= self.width:
            raise SoftLabelError(f"{self.scp[utt].rsplit(':', 1)[0]}: utterance {utt}: token id {int(ids.max())} "
                                 f"is outside the {self.width}-token list: corrupt ark; rerun stage 4")
        return ids, probs

    def sparse(self, utt):
        """(ids [N, K], probs [N, K]); a dense dump gives every token, most probable first."""
        mat = self._load(utt)
        if self.topk is None:
            return to_topk(torch.from_numpy(np.array(mat, dtype=np.float32)), self.width)
        return self._topk(utt, mat)

    def dense(self, utt):
        mat = self._load(utt)
        if self.topk is None:
            return torch.from_numpy(np.array(mat, dtype=np.float32))  # a writable copy
        ids, probs = self._topk(utt, mat)
        return torch.zeros(ids.shape[0], self.width).scatter_(1, ids, probs)

    def num_frames(self, utt):
        return self._load(utt).shape[0]


def index_by_utterance(readers, utts_of, what="soft labels"):
    """{utt: reader} over several dumps (e.g. a training set's and an untranscribed pool's);
    an utterance in two of them is a SoftLabelError naming both."""
    where = {}
    for r in readers:
        for utt in utts_of(r):
            if utt in where:
                raise SoftLabelError(f"utterance {utt} has {what} in two dumps: {where[utt].dir} and {r.dir}")
            where[utt] = r
    return where


def bytes_per_frame(dump_dir):
    """Ark bytes per stored frame (dense: ~4V, top-k: ~B*K + K-1, format 1 ~8K), for reporting storage cost."""
    reader = SoftLabelReader(dump_dir)
    arks = {v.rsplit(":", 1)[0] for v in reader.scp.values()}
    frames = sum(reader.num_frames(utt) for utt in reader.scp)
    return sum(os.path.getsize(a) for a in arks) / max(frames, 1)
