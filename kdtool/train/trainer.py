"""Stage 3 (and, with a distillation loss, stage 5): train a model into a self-contained exp dir.

    exp/<name>/config.yaml        resolved config (+ data and token list it was trained on)
    exp/<name>/tokens/            token list (and sentencepiece model) - a copy, so the dir stands alone
    exp/<name>/cmvn.ark           feature normalization the model expects
    exp/<name>/checkpoints/       the N best epochs by validation loss, and last.ckpt (resume point)
    exp/<name>/model.pth          weights averaged over the N best epochs: what later stages load
    exp/<name>/model_info.json    kind, params, size, vocabulary, which epochs were averaged, and the
                                  run's record (kdtool.bin.train / distill): config, overrides, twin_config,
                                  seed, seed_option, teacher, command
    exp/<name>/tensorboard/, csv/version_<run>/metrics.csv, learning_curve.png

A rerun resumes from checkpoints/last.ckpt; a finished run is left as it is.
"""
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kdtool.errors import ConfigError
from kdtool.features.cmvn import load_cmvn
from kdtool.models import build_model, count_params, model_size_mb
from kdtool.models.fast_dropout import use_fast_dropout
from kdtool.models.load import write_checksums
from kdtool.tokens import Tokenizer
from kdtool.train.config import SPEED_KEYS, model_part
from kdtool.train.dataset import SpeechDataset, build_dataloader
from kdtool.train.module import ASRTask
from kdtool.train.plot import plot_learning_curve
from kdtool.train.progress import LogLines
from kdtool.train.resume import PeriodicCheckpoint, ResumableLoader
from kdtool.train.sampler import BucketBatchSampler
from kdtool.utils.atomic import atomic_open, atomic_path

TOKEN_FILES = ("tokens.txt", "token_type", "bpe.model")


def prepare_exp_dir(exp_dir, config, token_dir, cmvn_path, data_info):
    """Write config, tokens and CMVN into the exp dir; refuse to resume a run made with another config."""
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    saved = {**config, "data": data_info}
    if (exp / "config.yaml").exists():
        old = yaml.safe_load((exp / "config.yaml").read_text())

        def learned(c):  # what the run learns: speed keys (fast_dropout) may differ on resume
            return {k: v for k, v in c.items() if k not in SPEED_KEYS} if isinstance(c, dict) else c
        if learned(old) != learned(json.loads(json.dumps(saved))):
            raise ConfigError(f"{exp / 'config.yaml'}: this exp dir holds a run with another config or data; "
                              f"use another exp dir, or remove it to start over")
    (exp / "tokens").mkdir(exist_ok=True)
    for name in TOKEN_FILES:
        if (Path(token_dir) / name).exists():
            shutil.copy2(Path(token_dir) / name, exp / "tokens" / name)
    with atomic_path(exp / "cmvn.ark") as tmp:
        shutil.copy2(cmvn_path, tmp)
    with atomic_open(exp / "config.yaml") as f:
        yaml.safe_dump(json.loads(json.dumps(saved)), f, sort_keys=False)


def average_checkpoints(paths):
    """Mean of the model weights in lightning checkpoints (integer buffers taken from the first)."""
    avg = None
    for p in paths:
        state = {k[len("model."):]: v for k, v in torch.load(p, map_location="cpu", weights_only=False)
                 ["state_dict"].items() if k.startswith("model.")}
        if avg is None:
            avg = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                if v.is_floating_point():
                    avg[k] += v.double()
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in avg.items()}


def train(config, exp_dir, train_dirs, valid_dir, token_dir, cmvn_path, devices="auto", num_nodes=1,
          accelerator="auto", loss_fn=None, model=None, extra_info=None, wrap_train_set=None, checkpoint_minutes=10):
    """Train (or resume) and write the exp dir. Returns model_info as a dict. ``checkpoint_minutes``:
    how often last.ckpt is also written inside an epoch (0: at epoch ends only); a rerun resumes there.

    Distillation (kdtool.kd.distill) passes its ``loss_fn(model, batch)``, the student ``model``
    and ``wrap_train_set(dataset)``, which adds soft labels to the training items."""
    exp = Path(exp_dir)
    tokenizer = Tokenizer(token_dir)
    cmvn = load_cmvn(cmvn_path)
    L.seed_everything(config["seed"], workers=True, verbose=False)  # the same config gives the same initial weights
    if model is None:
        model = build_model(model_part(config), len(tokenizer), input_size=cmvn.shape[1] - 1)
    train_set = SpeechDataset(train_dirs, tokenizer, cmvn_path, require_text=loss_fn is None)
    if wrap_train_set is not None:
        train_set = wrap_train_set(train_set)
    valid_set = SpeechDataset(valid_dir, tokenizer, cmvn_path)
    for name, ds in (("training", train_set), ("validation", valid_set)):
        if len(ds) == 0:
            raise ValueError(f"the {name} set is empty")
    data_info = {"train": [str(d) for d in ([train_dirs] if isinstance(train_dirs, (str, Path)) else train_dirs)],
                 "valid": str(valid_dir), "token_list": str(token_dir), "cmvn": str(cmvn_path)}
    prepare_exp_dir(exp, config, token_dir, cmvn_path, data_info)
    if (exp / "model_info.json").exists() and (exp / "model.pth").exists():
        logging.info("%s: already trained (model.pth); nothing to do", exp)
        return json.loads((exp / "model_info.json").read_text())

    ckpt = ModelCheckpoint(dirpath=exp / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           monitor="valid/loss", mode="min", save_top_k=config["keep_nbest_models"], save_last=True,
                           enable_version_counter=False)  # last.ckpt is also PeriodicCheckpoint's: not last-v1.ckpt
    # a converged model stops by itself: training "until the validation loss is flat" needs no guess of max_epoch
    stop = [EarlyStopping("valid/loss", patience=config["patience"], mode="min")] if config["patience"] else []
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = config["precision"]
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    # a progress bar on a terminal; in a log file (kd.sh's train.log) plain periodic lines instead
    tty = sys.stderr.isatty()
    bar = [TQDMProgressBar(refresh_rate=config["log_interval"])] if tty else []
    trainer = L.Trainer(
        max_epochs=config["max_epoch"], accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        precision=precision, gradient_clip_val=config["grad_clip"], accumulate_grad_batches=config["accum_grad"],
        callbacks=[ckpt, *stop, *bar, LogLines(config["log_interval"], periodic=not tty),
                   PeriodicCheckpoint(exp / "checkpoints" / "last.ckpt", checkpoint_minutes)], enable_progress_bar=tty,
        # a resumed run logs to csv/version_<n+1>: lightning would overwrite the earlier run's metrics
        logger=[TensorBoardLogger(exp, name="tensorboard", version=""), CSVLogger(exp, name="csv")],
        log_every_n_steps=config["log_interval"], use_distributed_sampler=False,  # our sampler knows the ranks
        num_sanity_val_steps=0, enable_model_summary=False, deterministic=False)

    def loader(ds, shuffle):
        sampler = BucketBatchSampler(ds.num_frames, config["batch_frames"], shuffle=shuffle, seed=config["seed"],
                                     num_replicas=trainer.world_size, rank=trainer.global_rank,
                                     max_batch_size=config["max_batch_size"])
        return build_dataloader(ds, sampler, num_workers=config["num_workers"],
                                loader_class=ResumableLoader if shuffle else torch.utils.data.DataLoader)

    def batches_trained():  # of this epoch, when a checkpoint is saved (0 once the epoch is complete)
        n = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return 0 if n >= trainer.num_training_batches else n

    if config["fast_dropout"]:  # no weights change: model.pth, state_dict keys and exports are as without it
        use_fast_dropout(model)
    task = ASRTask(model, config, loss_fn)
    last = exp / "checkpoints" / "last.ckpt"
    start = time.time()
    logging.info("%s: %s model, %d parameters (%.2f MB); %d training / %d validation utterances%s", exp, model.kind,
                 count_params(model), model_size_mb(model), len(train_set), len(valid_set),
                 f"; resuming from {last}" if last.exists() else "")
    try:
        train_loader = loader(train_set, True)
        train_loader.trained = batches_trained
        trainer.fit(task, train_loader, loader(valid_set, False), ckpt_path=last if last.exists() else None)
    except SIGTERMException:
        # lightning stops on SIGTERM (a kill, a scheduler's time limit) with exit code 0: the stage would go on
        # as if the model were trained
        logging.error("%s: stopped by SIGTERM in epoch %d, not trained (no model.pth); rerun the same command "
                      "to resume from %s", exp, trainer.current_epoch + 1, last)
        sys.exit(128 + signal.SIGTERM)
    if not trainer.is_global_zero:
        return None

    # [:k]: checkpoints copied in from a run with a larger keep_nbest_models stay on record
    best = sorted(ckpt.best_k_models.items(), key=lambda kv: float(kv[1]))[:config["keep_nbest_models"]]
    # a run resumed elsewhere from last.ckpt alone (a long training carried between machines) has the record
    # of best epochs whose files stayed behind, or none: average those still here, else take last.ckpt
    gone = [Path(p).name for p, _ in best if not Path(p).exists()]
    best = [(p, v) for p, v in best if Path(p).exists()]
    if gone or not best:
        logging.warning("%s: best checkpoints %s are not on disk (the run was resumed from last.ckpt elsewhere); "
                        "averaging %s", exp, ", ".join(gone) or "(none on record)",
                        ", ".join(Path(p).name for p, _ in best) or "nothing: model.pth is last.ckpt's weights")
        best = best or [(str(last), float(ckpt.current_score) if ckpt.current_score is not None else float("nan"))]
    torch.save(average_checkpoints([p for p, _ in best]), exp / "model.pth.tmp")
    Path(exp / "model.pth.tmp").replace(exp / "model.pth")
    write_checksums(exp)  # checked by every later load: a token list edited in place is named, not used
    info = {"kind": model.kind, "params": count_params(model), "size_mb": round(model_size_mb(model), 3),
            "vocab_size": len(tokenizer), "input_size": int(cmvn.shape[1] - 1),
            "averaged": {Path(p).name: round(float(v), 4) if v == v else None for p, v in best},
            "epochs": trainer.current_epoch, "precision": precision, "train_minutes_this_run": round((time.time() - start) / 60, 2),
            **(extra_info or {})}
    with atomic_open(exp / "model_info.json") as f:
        json.dump(info, f, indent=2)
    plot_learning_curve(exp / "csv", exp / "learning_curve.png", title=exp.name)
    logging.info("%s: averaged %d checkpoints into model.pth (%s)", exp, len(best), ", ".join(info["averaged"]))
    return info
