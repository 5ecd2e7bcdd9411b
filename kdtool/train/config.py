"""Training configs: one YAML holds the model (see kdtool.models.build) and how to train it.

Every key is checked before training starts; an unknown one is an error that names it. The
resolved config (defaults filled in) is saved next to the checkpoints.
"""
import copy

from kdtool.models.build import MODEL_KEYS, ConfigError, read_yaml

TRAIN_DEFAULTS = {
    "max_epoch": 30,
    "batch_frames": 20000,      # padded input frames per batch (per GPU)
    "max_batch_size": None,
    "accum_grad": 1,
    "optim": "adam",            # adam | adamw
    "optim_conf": {"lr": 0.002, "betas": [0.9, 0.98], "weight_decay": 1e-6},
    "scheduler": "warmuplr",    # warmuplr (Noam, as ESPnet) | none
    "scheduler_conf": {"warmup_steps": 2500},
    "grad_clip": 5.0,
    "keep_nbest_models": 5,     # average the N best checkpoints by validation loss
    "patience": None,           # stop once the validation loss has not improved for N epochs (None: max_epoch)
    "seed": 0,
    "num_workers": 0,
    "precision": "auto",        # auto: bf16/16 mixed on GPU, 32 on CPU; or any lightning precision
    "log_interval": 20,         # steps between logged training losses
}
TRAIN_KEYS = set(TRAIN_DEFAULTS)


def resolve_config(config, source="config"):
    """Fill in training defaults and check every key; return a new dict."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values")
    unknown = sorted(set(config) - MODEL_KEYS - TRAIN_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; model keys: {sorted(MODEL_KEYS)}, "
                          f"training keys: {sorted(TRAIN_KEYS)}")
    out = copy.deepcopy(TRAIN_DEFAULTS)
    for key, value in config.items():
        if key in ("optim_conf", "scheduler_conf") and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    if out["optim"] not in ("adam", "adamw"):
        raise ConfigError(f"{source}: optim: unknown {out['optim']!r} (adam or adamw)")
    if out["scheduler"] not in ("warmuplr", "none", None):
        raise ConfigError(f"{source}: scheduler: unknown {out['scheduler']!r} (warmuplr or none)")
    return out


def load_config(path):
    return resolve_config(read_yaml(path, "config file"), source=str(path))


def model_part(config):
    return {k: v for k, v in config.items() if k in MODEL_KEYS}
