"""Load a trained exp dir (stage 3 or 5) as one object: model, tokenizer and CMVN together.

Training records the sha256 of what is loaded (model.pth, tokens/tokens.txt, cmvn.ark) in
``sha256.json``; loading checks them, so a token list or CMVN edited in place (which would decode
garbage without a word) is named instead of used. Weights that differ only warn: replacing
model.pth by hand (other checkpoints averaged, tests simulating a retraining) gives another model,
not a garbled one, and a model.pth that does not fit the token list fails on its shapes anyway. An
exp dir without the record (made before it existed, or installed from a package, which checks its
own) is loaded unchecked.
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from kdtool.features.cmvn import load_cmvn
from kdtool.models.build import MODEL_KEYS, build_model, count_params, model_size_mb
from kdtool.tokens import Tokenizer
from kdtool.utils.atomic import atomic_open
from kdtool.utils.files import file_sha256

CHECKSUMS = "sha256.json"
CHECKED_FILES = ("model.pth", "tokens/tokens.txt", "cmvn.ark")


@dataclass
class TrainedModel:
    exp_dir: Path
    model: torch.nn.Module
    tokenizer: Tokenizer
    cmvn: np.ndarray
    config: dict

    @property
    def info(self):
        return {"model_dir": str(self.exp_dir), "kind": self.model.kind, "params": count_params(self.model),
                "size_mb": round(model_size_mb(self.model), 3)}


def resolve_device(name):
    """The torch.device for ``--device name`` (cpu, cuda, cuda:N), checked before any work: a
    ValueError naming the device if this machine cannot run on it."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name!r}: not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device {name}: only cpu and cuda (cuda:N) are supported")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine "
                         "(torch.cuda.is_available() is False); use --device cpu")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise ValueError(f"--device {name}: this machine has {count} CUDA device(s): cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", index)


def model_device(model):
    """The device a model's weights are on (where its inputs must go)."""
    return next(model.parameters()).device


def load_weights(path):
    """The state dict saved at ``path``; a ValueError naming the file if it is damaged or cut short
    (torch's own error names neither)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError from the zip reader, EOFError, UnpicklingError...
        raise ValueError(f"{path}: cannot load the weights ({type(e).__name__}: {str(e).splitlines()[0]}): "
                         "the file is damaged or incomplete (a copy cut short?); copy it again or rerun the "
                         "training's averaging") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a model's state dict")
    return state


def write_checksums(exp_dir):
    """Record the sha256 of the exp dir's weights, token list and CMVN (training calls it last)."""
    exp = Path(exp_dir)
    with atomic_open(exp / CHECKSUMS) as f:
        json.dump({name: file_sha256(exp / name) for name in CHECKED_FILES}, f, indent=2)


def check_checksums(exp_dir, names=CHECKED_FILES, warn_only=("model.pth",)):
    """A ValueError naming the file if one of ``names`` differs from the sha256 training recorded
    (for those in ``warn_only``, a warning)."""
    exp = Path(exp_dir)
    path = exp / CHECKSUMS
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path}: not valid JSON (damaged?); restore it, or delete it to load {exp} "
                         "unchecked") from None
    for name in names:
        if name in recorded and file_sha256(exp / name) != recorded[name]:
            if name in warn_only:
                logging.warning("%s: not the weights training wrote (its sha256 differs from the one in %s): "
                                "replaced by hand? Results are not those of the training", exp / name, path)
                continue
            raise ValueError(f"{exp / name}: changed since training (its sha256 differs from the one in {path}); "
                             f"a model loaded with another {name} gives wrong output: restore the file, or retrain")


def load_trained(exp_dir, weights="model.pth", device="cpu"):
    """Raise a clear error if the dir lacks weights, or its token list does not fit its weights.
    The model goes to ``device`` (checked by resolve_device) in eval mode."""
    device = resolve_device(device)
    exp = Path(exp_dir)
    for name in ("config.yaml", "tokens/tokens.txt", "cmvn.ark", weights):
        if not (exp / name).exists():
            raise FileNotFoundError(f"{exp}: not a trained model dir: {name} is missing"
                                    + (" (training did not finish?)" if name == weights else ""))
    config = yaml.safe_load((exp / "config.yaml").read_text())
    tokenizer = Tokenizer(exp / "tokens")
    cmvn = load_cmvn(exp / "cmvn.ark")
    state = load_weights(exp / weights)
    # after the reads: a damaged file is named as damaged, a readable one that changed as changed
    check_checksums(exp, [n for n in CHECKED_FILES if n != "model.pth" or weights == "model.pth"])
    model = build_model({k: v for k, v in config.items() if k in MODEL_KEYS}, len(tokenizer),
                        input_size=cmvn.shape[1] - 1)
    own = model.state_dict()
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        detail = (f"shape mismatch in {wrong[:3]}" if wrong else f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise ValueError(f"{exp / weights}: does not fit a {model.kind} model with the {len(tokenizer)}-token list "
                         f"of {exp / 'tokens'} ({detail})")
    model.load_state_dict(state)
    return TrainedModel(exp, model.to(device).eval(), tokenizer, cmvn, config)

