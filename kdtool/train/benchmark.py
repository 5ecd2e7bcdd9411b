"""Training speed of a config on fixed batches, with each CPU speed option on and off.

Each variant (``VARIANTS``: torch's dropout or kdtool's fast one, the unfused or the fused Adam, and
optionally torch.compile) gets its own model, built from the config with its seed (the same initial
weights), and trains the same batches in the same order, step by step as kdtool.train does (per-step
seeds, gradient clipping, the config's optimizer and warm-up schedule). The variants take turns, a round
of ``steps_per_round`` steps each, starting with another variant each round, so that a change in the
load of the machine falls on all of them alike. Times are the process's CPU time (what the steps
cost, much less disturbed by other processes than the wall clock, which is reported too); the
speed-up of a variant is the baseline's CPU seconds per step over its own, with the spread of the
per-round ratios. Batches come from a feature dir (its first batches by the config's batch_frames) or are
synthesized: random features and token ids of utterances with lengths spread over a range.
"""
import logging
import random
import statistics
import time

import numpy as np
import torch

from kdtool.models import build_model, count_params
from kdtool.models.fast_dropout import use_fast_dropout
from kdtool.train.config import model_part
from kdtool.train.dataset import SpeechDataset, collate
from kdtool.train.module import build_optimizer, warmup_lr_lambda
from kdtool.train.sampler import BucketBatchSampler

# name: (fast_dropout, fused Adam, torch.compile: None, "dynamic" (one graph for all shapes) or "static"
# (a graph per batch shape: only with a few distinct batches, an upper bound on what compiling gives))
VARIANTS = {"torch": (False, False, None), "fast_dropout": (True, False, None), "fused_adam": (False, True, None),
            "both": (True, True, None), "compile": (True, True, "dynamic"), "compile_static": (True, True, "static")}
BASELINE = "torch"


def synthetic_batches(batch_frames, n_batches, vocab_size, input_size=80, frames=(150, 350), tokens_per_frame=0.12,
                      seed=0):
    """``n_batches`` padded batches of random utterances (lengths uniform in ``frames``), each as many
    utterances as fit ``batch_frames`` padded frames (at least one), longest first as collate makes them."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        lens = []
        while True:
            n = int(torch.randint(frames[0], frames[1] + 1, (1,), generator=g))
            if lens and max(lens + [n]) * (len(lens) + 1) > batch_frames:
                break
            lens.append(n)
        items = [{"utt": f"synth{b}_{i}", "feats": torch.randn(n, input_size, generator=g),
                  "ys": torch.randint(1, vocab_size - 1, (max(1, round(n * tokens_per_frame)),), generator=g),
                  "transcribed": True} for i, n in enumerate(lens)]
        batches.append(collate(items))
    return batches


def data_batches(feat_dir, tokenizer, cmvn_path, batch_frames, n_batches, max_batch_size=None):
    """The first ``n_batches`` batches of a feature dir, by the config's batch_frames (sorted, unshuffled)."""
    ds = SpeechDataset(feat_dir, tokenizer, cmvn_path)
    sampler = BucketBatchSampler(ds.num_frames, batch_frames, shuffle=False, max_batch_size=max_batch_size)
    return [collate([ds[u] for u in ids]) for ids, _ in zip(sampler, range(n_batches))]


class Variant:
    """One variant's model, optimizer and schedule, trained step by step as kdtool.train.module does."""

    def __init__(self, name, config, vocab_size, input_size):
        self.name = name
        fast, fused, compiled = VARIANTS[name]
        torch.manual_seed(config["seed"])
        self.model = build_model(model_part(config), vocab_size, input_size=input_size).train()
        if fast:
            use_fast_dropout(self.model)
        self.forward = torch.compile(self.model, dynamic=compiled == "dynamic") if compiled else self.model
        conf = config["optim_conf"] if fused else {**config["optim_conf"], "fused": False}
        self.opt = build_optimizer(self.model.parameters(), config["optim"], conf)
        warmup = config["scheduler_conf"]["warmup_steps"] if config["scheduler"] not in (None, "none") else None
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, warmup_lr_lambda(warmup)) if warmup else None
        self.seed, self.grad_clip, self.step_count = config["seed"], config["grad_clip"], 0
        self.cpu, self.wall, self.timed_steps, self.rounds = 0.0, 0.0, 0, []

    def step(self, batch):
        seed = (self.seed + 7919 * self.step_count) % 2**32  # as ASRTask.on_train_batch_start
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        loss, _ = self.forward(batch["feats"], batch["feats_lens"], batch["ys"], batch["ys_lens"])
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        return float(loss.detach())

    def timed(self, batches):
        cpu, wall = time.process_time(), time.perf_counter()
        for batch in batches:
            self.step(batch)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        self.cpu, self.wall, self.timed_steps = self.cpu + cpu, self.wall + wall, self.timed_steps + len(batches)
        self.rounds.append(cpu / len(batches))


def run_benchmark(config, batches, vocab_size, variants, steps, steps_per_round=5, warmup_steps=2):
    """Train every variant ``steps`` timed steps (after ``warmup_steps`` untimed ones) on ``batches``
    in turn; returns one row per variant (dicts). The baseline (torch's dropout, unfused Adam) runs too."""
    variants = [BASELINE, *(v for v in variants if v != BASELINE)]
    input_size = batches[0]["feats"].shape[-1]
    runs, failed = [], []
    for name in variants:
        run = Variant(name, config, vocab_size, input_size)
        start = time.perf_counter()
        try:
            for i in range(warmup_steps):
                run.step(batches[i % len(batches)])
        except Exception as e:  # noqa: BLE001 - a variant torch cannot run (a compiler error) is a result too
            if not VARIANTS[name][2]:
                raise
            logging.error("%s: failed in its warm-up after %.0f s: %s", name, time.perf_counter() - start,
                          str(e).splitlines()[0] if str(e) else type(e).__name__)
            failed.append({"variant": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           "warmup_s": round(time.perf_counter() - start, 1)})
            continue
        run.warmup_seconds = time.perf_counter() - start
        logging.info("%s: %d warm-up steps in %.1f s", run.name, warmup_steps, run.warmup_seconds)
        runs.append(run)
    n_rounds = -(-steps // steps_per_round)
    for r in range(n_rounds):
        first = r * steps_per_round
        chunk = [batches[(warmup_steps + first + i) % len(batches)]
                 for i in range(min(steps_per_round, steps - first))]
        for run in runs[r % len(runs):] + runs[:r % len(runs)]:  # another variant starts each round
            run.timed(chunk)
        logging.info("round %d/%d: %s", r + 1, n_rounds,
                     ", ".join(f"{run.name} {run.rounds[-1]:.3f} s/step" for run in runs))
    base = runs[0]
    frames = sum(int(b["feats_lens"].sum()) for b in batches) / len(batches)
    rows = []
    for run in runs:
        per_step = run.cpu / run.timed_steps
        ratios = [b / v for b, v in zip(base.rounds, run.rounds)]
        rows.append({"variant": run.name, "fast_dropout": VARIANTS[run.name][0], "fused_adam": VARIANTS[run.name][1],
                     "compile": VARIANTS[run.name][2] or False, "steps": run.timed_steps,
                     "cpu_s_per_step": round(per_step, 4), "wall_s_per_step": round(run.wall / run.timed_steps, 4),
                     "speedup": round(base.cpu / base.timed_steps / per_step, 3),
                     "speedup_rounds_min": round(min(ratios), 3), "speedup_rounds_max": round(max(ratios), 3),
                     "speedup_rounds_median": round(statistics.median(ratios), 3),
                     "warmup_s": round(run.warmup_seconds, 1), "frames_per_batch": round(frames),
                     "params": count_params(run.model)})
    return rows + failed


def markdown(rows, title):
    lines = [f"### {title}", "",
             "| variant | fast dropout | fused Adam | compile | steps | CPU s/step | wall s/step | speed-up "
             "(CPU) | per-round speed-ups (min / median / max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed after {r['warmup_s']} s: {r['error'][:200]} |")
            continue
        lines.append(f"| {r['variant']} | {r['fast_dropout']} | {r['fused_adam']} | {r['compile']} | {r['steps']} | "
                     f"{r['cpu_s_per_step']:.3f} | {r['wall_s_per_step']:.3f} | {r['speedup']:.3f}x | "
                     f"{r['speedup_rounds_min']:.2f} / {r['speedup_rounds_median']:.2f} / "
                     f"{r['speedup_rounds_max']:.2f} |")
    return "\n".join(lines) + "\n"
