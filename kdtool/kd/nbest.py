"""N-best lists of an AR teacher (stage 4) for sequence-level distillation (stage 5).

An N-best dir holds::

    nbest.json            {teacher, tokens_sha256, vocab_size, beam_size, nbest, ctc_weight, format_version,
                           teacher_sha256, data, feats_scp_sha256, text_sha256 (null: the lists need no
                           transcript)}: where they came from, checked by stages 4 and 5 (kdtool.utils.provenance)
    nbest.<job>.jsonl     one job's utterances, one JSON object per line (written under a temporary
                          name and renamed when complete)
    nbest.jsonl           all jobs' lines, sorted by utterance (LC_ALL=C); written last by ``merge_nbest``

A line::

    {"utt": "spk1-0001", "hyps": [{"tokens": [12, 7, 30], "text": "HI THERE", "score": -3.21}, ...]}

best hypothesis first; ``tokens`` are ids in the teacher's token list (no <sos/eos>), ``score`` the
teacher's beam-search log-score. A student weighs hypothesis n by softmax(score / tau) over the
utterance's list (``nbest_weights``).
"""
import json
import logging
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from kdtool.data.datadir import c_sorted
from kdtool.decode.ar import ARBeamSearch
from kdtool.kd.softlabels import SoftLabelError, index_by_utterance, tokens_sha256
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset, collate
from kdtool.utils import provenance
from kdtool.utils.atomic import atomic_open
from kdtool.utils.jobs import job_slice

FORMAT_VERSION = 1


def job_path(out_dir, job):
    return Path(out_dir).resolve() / f"nbest.{job}.jsonl"


def dump_nbest_job(teacher_dir, data_dir, out_dir, nbest=5, beam_size=10, ctc_weight=0.3, job=1, nj=1,
                   batch_size=8, device="cpu"):
    """Beam-search one job's slice of ``data_dir`` with an AR teacher; returns the job's stats."""
    trained = load_trained(teacher_dir, device=device)
    model = trained.model.eval()
    if model.kind != "ar":
        raise ValueError(f"{teacher_dir}: N-best lists come from an ar teacher, not a {model.kind} model")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"--nbest {nbest} must be in 1..beam_size ({beam_size})")
    search = ARBeamSearch(model, beam_size=beam_size, ctc_weight=ctc_weight)
    ds = SpeechDataset(data_dir, trained.tokenizer, cmvn_path=Path(teacher_dir) / "cmvn.ark", require_text=False)
    utts = job_slice(ds.utts, job, nj)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbest.jsonl").unlink(missing_ok=True)  # stale once any job reruns
    meta = {"teacher": str(Path(teacher_dir).resolve()), "tokens_sha256": tokens_sha256(
            Path(teacher_dir) / "tokens" / "tokens.txt"), "vocab_size": len(trained.tokenizer),
            "format_version": FORMAT_VERSION, **provenance.nbest_options(nbest, beam_size, ctc_weight),
            **provenance.record(teacher_dir, data_dir, uses_text=False)}
    with atomic_open(out / "nbest.json") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    final = job_path(out, job)
    tmp = final.with_name(f"{final.name}.tmp.{os.getpid()}")
    start, empty = time.perf_counter(), 0
    try:
        with open(tmp, "w", encoding="utf-8") as f, torch.no_grad(), \
                tqdm(total=len(utts), unit="utt", desc=f"nbest job {job}/{nj}", mininterval=5) as bar:
            for i in range(0, len(utts), batch_size):
                batch = collate([ds[u] for u in utts[i:i + batch_size]])
                enc, enc_lens = model.encode(batch["feats"].to(device), batch["feats_lens"].to(device))
                for utt, hyps in zip(batch["utts"], search.nbest(enc, enc_lens, nbest)):
                    hyps = [h for h in hyps if h[0]]  # an empty hypothesis teaches nothing
                    empty += not hyps
                    line = {"utt": utt, "hyps": [{"tokens": t, "text": trained.tokenizer.ids2text(t), "score": s}
                                                 for t, s in hyps]}
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                bar.update(len(batch["utts"]))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    if empty:
        logging.warning("job %d/%d: %d utterances got no non-empty hypothesis (kept with an empty list)",
                        job, nj, empty)
    return {"utterances": len(utts), "seconds": time.perf_counter() - start, "empty": empty}


def merge_nbest(out_dir, nj):
    """Join the jobs' lists into nbest.jsonl (sorted by utterance); returns the utterance count."""
    out = Path(out_dir)
    lines = {}
    for job in range(1, nj + 1):
        p = job_path(out, job)
        if not p.is_file():
            raise SoftLabelError(f"{p}: missing: N-best job {job} of {nj} did not finish; rerun the stage")
        for line in p.read_text(encoding="utf-8").splitlines():
            lines[json.loads(line)["utt"]] = line
    with atomic_open(out / "nbest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(lines[u] + "\n" for u in c_sorted(lines))
    return len(lines)


class NBestReader:
    """A merged N-best dir, checked against the student's token list when opened:
    ``reader[utt]`` -> list of (token ids, score), best first; ``utt in reader``."""

    def __init__(self, nbest_dir, tokens_path):
        self.dir = Path(nbest_dir)
        meta_path, lines = self.dir / "nbest.json", self.dir / "nbest.jsonl"
        for p in (meta_path, lines):
            if not p.is_file():
                raise SoftLabelError(f"{p}: missing: the N-best dump is incomplete (rerun stage 4)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise SoftLabelError(f"{meta_path}: format_version {self.meta.get('format_version')} is not "
                                 f"{FORMAT_VERSION}; redump the N-best lists")
        if (ours := tokens_sha256(tokens_path)) != self.meta["tokens_sha256"]:
            raise SoftLabelError(f"{tokens_path}: token list differs from the one the N-best lists in {self.dir} "
                                 f"were made with: sha256 {ours[:16]}... against {self.meta['tokens_sha256'][:16]}... "
                                 f"in {meta_path}; teacher and student must share tokens.txt")
        V = self.meta["vocab_size"]
        self.hyps = {}
        for n, line in enumerate(lines.read_text(encoding="utf-8").splitlines(), 1):
            try:
                entry = json.loads(line)
                utt, hyps = entry["utt"], [(list(h["tokens"]), float(h["score"])) for h in entry["hyps"]]
            except (ValueError, KeyError, TypeError) as e:
                raise SoftLabelError(f"{lines}:{n}: not an N-best line ({type(e).__name__}: {e})") from None
            for i, (tokens, _) in enumerate(hyps, 1):
                if not tokens:
                    raise SoftLabelError(f"{lines}: utterance {utt}: hypothesis {i} is empty")
                bad = [t for t in tokens if not (isinstance(t, int) and 0 < t < V - 2)]
                if bad:  # 0 is <blank>, V-2 <sos/eos>, V-1 <mask>: never a hypothesis token
                    raise SoftLabelError(f"{lines}: utterance {utt}: hypothesis {i} has token id {bad[0]}, not a "
                                         f"token of the {V}-entry list")
            self.hyps[utt] = hyps

    def __contains__(self, utt):
        return utt in self.hyps and bool(self.hyps[utt])

    def __getitem__(self, utt):
        return self.hyps[utt]


def nbest_weights(scores, tau=1.0):
    """Normalized hypothesis weights: softmax(score / tau) over one utterance's list."""
    return torch.softmax(torch.tensor(scores, dtype=torch.float32) / tau, dim=0)


class NBestSet:
    """Several N-best dirs (e.g. the training set's and the untranscribed pool's) read as one."""

    def __init__(self, nbest_dirs, tokens_path):
        self.readers = [NBestReader(d, tokens_path) for d in nbest_dirs]
        self._where = index_by_utterance(self.readers, lambda r: r.hyps, "N-best lists")

    def __contains__(self, utt):
        return utt in self._where and utt in self._where[utt]

    def __getitem__(self, utt):
        return self._where[utt][utt]

    def dirs(self):
        return ", ".join(str(r.dir) for r in self.readers)
