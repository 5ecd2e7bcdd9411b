"""Stage 4: dump a teacher's soft labels (see kdtool.kd.softlabels for the format) in parallel jobs.

``dump_job`` writes one job's slice of the sorted utterances (like compute_fbank's jobs)::

    soft_labels.<job>.ark / .scp      through SoftLabelWriter (temporary names until complete)
    soft_labels.<job>.stats.json      {utterances, frames, input_frames, skipped, skipped_utts, seconds}
                                      written last, so a job with stats is a finished job

``merge_dump`` joins the jobs (merge_jobs) and writes ``dump_info.json``:

    utterances, frames           stored (encoder) frames over all utterances
    input_frames                 10 ms feature frames they came from
    skipped                      utterances left out (--skip_bad)
    bytes_per_frame              ark bytes per stored frame
    dense_bytes_per_frame        4 * V: what dense float32 storage would take
    seconds                      teacher compute time summed over the jobs (encoder + posteriors)
    frames_per_second            frames / seconds (stored frames); input_frames_per_second likewise
    type, topk, temperature, teacher, vocab_size, subsampling, nj, format_version
    teacher_sha256, data, feats_scp_sha256, text_sha256   where it came from (kdtool.utils.provenance)

Types (rows per utterance in brackets; "frames" in the stats count rows):

    frame_posteriors   softmax(CTC logits / T) [encoder frames], every utterance (text not needed)
    fb_posteriors      CTC forward-backward occupancies given the transcript [encoder frames], T = 1
    token_posteriors   an AR teacher's decoder softmax(logits / T) under teacher forcing on the
                       transcript [tokens + <eos>]
    rnnt_lattice       a transducer teacher's collapsed (blank, next label, rest) distributions at
                       T over the output lattice [encoder frames * (tokens + 1)] (kdtool.kd.rnnt)
"""
import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from kdtool.data.datadir import DataDir
from kdtool.kd.forward_backward import ctc_min_length, ctc_occupancies_batch
from kdtool.kd.losses import soften
from kdtool.kd.rnnt import teacher_lattice_posteriors, to_matrix
from kdtool.kd.softlabels import (FRAME_TYPES, TYPES, SoftLabelError, SoftLabelWriter, bytes_per_frame, merge_jobs, row_width,
                                  tokens_sha256)
from kdtool.models.asr import subsampled_length, subsampling_factor
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset, collate
from kdtool.utils import provenance
from kdtool.utils.atomic import atomic_open
from kdtool.utils.jobs import job_slice


def stats_path(out_dir, job):
    return Path(out_dir) / f"soft_labels.{job}.stats.json"



NEEDS_TEXT = ("fb_posteriors", "token_posteriors", "rnnt_lattice")


def check_teacher(trained, type="frame_posteriors"):
    """A teacher that cannot give this type of soft labels is a ValueError saying why."""
    model = trained.model
    if type in FRAME_TYPES and getattr(model, "ctc", None) is None:
        raise ValueError(f"{trained.exp_dir}: the teacher ({model.kind}) has no CTC head (ctc_weight 0?): "
                         "no frame posteriors to dump")
    need = {"token_posteriors": "ar", "rnnt_lattice": "transducer"}.get(type)
    if need and model.kind != need:
        raise ValueError(f"{trained.exp_dir}: {type} come from an {need} teacher, not a {model.kind} model")


def teacher_meta(trained, type, topk, temperature, data_dir=None):
    """soft_labels.json's entries; with ``data_dir``, where the dump comes from (kdtool.utils.provenance)."""
    if type not in TYPES:
        raise ValueError(f"--type {type!r} is not one of {TYPES}")
    sub = subsampling_factor(trained.model)
    return {**provenance.soft_label_options(type, topk, temperature), "vocab_size": len(trained.tokenizer),
            "tokens_sha256": tokens_sha256(Path(trained.exp_dir) / "tokens" / "tokens.txt"),
            "teacher": str(Path(trained.exp_dir).resolve()), "subsampling": sub, "frame_shift_ms": 10 * sub,
            **(provenance.record(trained.exp_dir, data_dir, type in NEEDS_TEXT) if data_dir else {})}


def _bad_utterances(model, ds, utts, type):
    """{utt: why} for utterances that cannot get soft labels (too short for the encoder / the transcript)."""
    bad = {}
    for utt in utts:
        n = subsampled_length(model, ds.num_frames[utt])
        if n < 1:
            bad[utt] = f"{ds.num_frames[utt]} input frames give no encoder frame (too short for the subsampling)"
        elif type == "fb_posteriors":
            ys = ds._ys[utt]  # tokenized when the dataset was built
            need = ctc_min_length(ys)
            if n < need:
                bad[utt] = (f"{n} encoder frames cannot align its {len(ys)}-token transcript "
                            f"(CTC needs at least {need})")
    return bad


def dump_job(teacher_dir, data_dir, out_dir, type="frame_posteriors", topk=None, temperature=1.0, job=1, nj=1,
             batch_size=16, skip_bad=False, device="cpu"):
    """Write one job's soft labels; returns its stats dict."""
    out = Path(out_dir)
    trained = load_trained(teacher_dir, device=device)
    check_teacher(trained, type)
    model = trained.model.eval()
    if type == "fb_posteriors" and temperature != 1.0:
        logging.warning("--type fb_posteriors is computed at temperature 1; --temperature %s is ignored", temperature)
    if type in NEEDS_TEXT and not DataDir(data_dir).has("text"):
        raise ValueError(f"{data_dir}: no text file: --type {type} needs transcripts "
                         "(use --type frame_posteriors for untranscribed data)")
    ds = SpeechDataset(data_dir, trained.tokenizer, cmvn_path=Path(teacher_dir) / "cmvn.ark",
                       require_text=type in NEEDS_TEXT)
    if len(ds) == 0:
        raise ValueError(f"{data_dir}: no utterances")
    meta = teacher_meta(trained, type, topk, temperature, data_dir)  # hashes the inputs as they are read
    utts = job_slice(ds.utts, job, nj)
    bad = _bad_utterances(model, ds, utts, type)
    if bad:
        first = next(iter(bad))
        if not skip_bad:
            raise ValueError(f"{data_dir}: utterance {first}: {bad[first]}"
                             + (f" ({len(bad)} such utterances in job {job}/{nj})" if len(bad) > 1 else "")
                             + "; --skip_bad true leaves them out")
        for utt, why in bad.items():
            logging.warning("skipping utterance %s: %s", utt, why)
        logging.warning("job %d/%d: skipped %d of %d utterances (--skip_bad true)", job, nj, len(bad), len(utts))
    # longest first: the worst case (memory, speed) shows up early; padding stays small
    order = sorted((u for u in utts if u not in bad), key=lambda u: (-ds.num_frames[u], u))

    stats_path(out, job).unlink(missing_ok=True)
    (out / "dump_info.json").unlink(missing_ok=True)
    frames = input_frames = 0
    seconds = 0.0
    with SoftLabelWriter(out, meta, job) as writer, torch.no_grad(), \
            tqdm(total=len(order), unit="utt", desc=f"{type} job {job}/{nj}", mininterval=5) as bar:
        for i in range(0, len(order), batch_size):
            batch = collate([ds[u] for u in order[i:i + batch_size]])
            start = time.perf_counter()
            rows = teacher_rows(model, batch, type, meta["temperature"], device)
            seconds += time.perf_counter() - start
            for utt, mat in zip(batch["utts"], rows):
                writer.write(utt, mat)
                frames += mat.shape[0]
            input_frames += int(batch["feats_lens"].sum())
            bar.update(len(batch["utts"]))
    stats = {"utterances": len(order), "frames": frames, "input_frames": input_frames, "skipped": len(bad),
             "skipped_utts": sorted(bad), "seconds": seconds}
    with atomic_open(stats_path(out, job)) as f:
        json.dump(stats, f, indent=2)
    logging.info("%s job %d/%d: %d utterances, %d frames in %.1f s (%.0f frames/s)%s", out, job, nj, len(order),
                 frames, seconds, frames / max(seconds, 1e-9), f", {len(bad)} skipped" if bad else "")
    return stats


def teacher_rows(model, batch, type, temperature, device="cpu"):
    """The teacher's soft labels for one batch: a list of per-utterance [rows, width] probabilities."""
    feats, feats_lens = batch["feats"].to(device), batch["feats_lens"].to(device)
    ys, ys_lens = batch["ys"].to(device), batch["ys_lens"].to(device)
    if type == "rnnt_lattice":
        return [to_matrix(p).cpu() for p in teacher_lattice_posteriors(model, feats, feats_lens, ys, ys_lens,
                                                                       temperature)]
    enc, enc_lens = model.encode(feats, feats_lens)
    if type == "token_posteriors":
        logits, _ = model.decoder_logits(enc, enc_lens, ys, ys_lens)  # positions: tokens, then <eos>
        probs = soften(logits, temperature).exp().cpu()
        return [probs[b, :n + 1] for b, n in enumerate(batch["ys_lens"].tolist())]
    for b, utt in enumerate(batch["utts"]):  # stored frames must line up with a student's frames
        expected = subsampled_length(model, int(batch["feats_lens"][b]))
        if int(enc_lens[b]) != expected:
            raise SoftLabelError(f"utterance {utt}: the encoder gave {int(enc_lens[b])} frames, expected {expected}")
    log_probs = model.ctc_log_probs(enc)
    if type == "frame_posteriors":
        probs = soften(log_probs, temperature).exp()  # = softmax(logits / T)
    else:
        probs = ctc_occupancies_batch(log_probs, enc_lens, ys, batch["ys_lens"], blank=model.blank)
    probs = probs.cpu()
    return [probs[b, :n] for b, n in enumerate(enc_lens.tolist())]


def merge_dump(out_dir, nj):
    """Join the finished jobs into soft_labels.scp and write dump_info.json; returns its dict."""
    out = Path(out_dir)
    total = {"utterances": 0, "frames": 0, "input_frames": 0, "skipped": 0, "seconds": 0.0}
    for job in range(1, nj + 1):
        p = stats_path(out, job)
        if not p.is_file():
            raise SoftLabelError(f"{p}: missing: soft-label job {job} of {nj} did not finish; rerun the stage")
        stats = json.loads(p.read_text())
        for k in total:
            total[k] += stats[k]
    n = merge_jobs(out, nj)
    if n != total["utterances"]:
        raise SoftLabelError(f"{out}: the jobs' scp files hold {n} utterances, their stats {total['utterances']}; "
                             "rerun the stage")
    meta = json.loads((out / "soft_labels.json").read_text())
    secs = max(total["seconds"], 1e-9)
    info = {**total, "bytes_per_frame": round(bytes_per_frame(out), 3),
            "dense_bytes_per_frame": 4 * row_width(meta),
            "frames_per_second": round(total["frames"] / secs, 1),
            "input_frames_per_second": round(total["input_frames"] / secs, 1),
            "seconds": round(total["seconds"], 3), "nj": nj,
            **{k: meta.get(k) for k in ("type", "topk", "temperature", "teacher", "vocab_size", "subsampling",
                                        "format_version", *provenance.KEYS)}}
    with atomic_open(out / "dump_info.json") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    logging.info("%s: %d utterances, %d frames, %.1f bytes/frame (dense: %d)%s", out, n, total["frames"],
                 info["bytes_per_frame"], info["dense_bytes_per_frame"],
                 f", {total['skipped']} skipped" if total["skipped"] else "")
    return info
