"""Training configs: one YAML holds the model (see kdtool.models.build) and how to train it.

Every key is checked before training starts; an unknown one is an error that names it. The
resolved config (defaults filled in) is saved next to the checkpoints.

A config may inherit: ``base: <file, relative to this config's dir>`` starts from that config (which may
have a base of its own) and the keys given here override it; mappings merge key by key, anything else
(a list, a number) replaces, and a config naming another ``encoder`` or ``decoder`` than its base's
starts that component's ``*_conf`` afresh. A run overrides keys again with ``KEY=VALUE`` items (``--set`` of
kdtool.bin.train / distill): dotted keys into mappings, the value parsed as YAML
(``kd_conf.alpha=0.3``, ``max_epoch=5``, ``specaug_conf.freq_mask_width_range=[0,10]``).
A KD student's config may also name its twin, ``twin: <file, relative to this config's dir>``: not a
training key (kdtool.kd.distill.twin_config reads it; stage 5 records it).
"""
import copy
from pathlib import Path

import yaml

from kdtool.errors import ConfigError
from kdtool.models.build import DECODER_OF_KIND, MODEL_KEYS
from kdtool.utils.yamlfile import read_yaml

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
    "fast_dropout": True,       # dropout of CPU tensors from 16 random bits per element (kdtool.models.fast_dropout,
                                # ~3x faster than torch's; keep rate within 1/131072 of 1 - p); GPUs: torch's own
}
TRAIN_KEYS = set(TRAIN_DEFAULTS)
# Keys that change how fast a run trains, not what it learns: a run resumes with other values of them (a
# run started before a key existed resumes with its default).
SPEED_KEYS = {"fast_dropout"}


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
    if not isinstance(out["fast_dropout"], bool):
        raise ConfigError(f"{source}: fast_dropout: expected true or false, not {out['fast_dropout']!r}")
    if out["scheduler"] not in ("warmuplr", "none", None):
        raise ConfigError(f"{source}: scheduler: unknown {out['scheduler']!r} (warmuplr or none)")
    return out


def merge(base, over):
    """``base`` with ``over``'s keys: mappings merged recursively, other values replaced; a new dict."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_chain(path):
    """[(file, its own keys)] from ``path`` up its ``base:`` chain, ``base`` left out (a file's ``twin:``
    stays: kdtool.kd.distill.twin_config reads it); a missing base or a cycle is a ConfigError."""
    path, chain, seen = Path(path), [], ()
    while True:
        raw = read_yaml(path, "config file")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        raw = dict(raw)
        base = raw.pop("base", None)
        chain.append((path, raw))
        if base is None:
            return chain
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: base: expected a config file name relative to {path.parent}, not {base!r}")
        base_path = path.parent / base
        seen += (path.resolve(),)
        if base_path.resolve() in seen:
            cycle = " -> ".join(str(p) for p in seen + (base_path.resolve(),))
            raise ConfigError(f"{path}: base: {base} forms a cycle ({cycle}); one of them must not name a base")
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: {base_path} does not exist (a base is relative to the config's own dir)")
        path = base_path


def _read_inherited(path):
    """The YAML at ``path`` merged over its ``base:`` chain. ``twin:`` names a file's twin and is not a key
    of the config (nor inherited as one)."""
    config = {}
    for _, raw in reversed(config_chain(path)):
        raw = {k: v for k, v in raw.items() if k != "twin"}
        config = merge(_own_components(config, raw), raw)
    return config


def _own_components(base, raw):
    """``base`` without the ``encoder_conf`` / ``decoder_conf`` of a component that ``raw`` replaces: a
    base's options belong to its own encoder or decoder (an LSTM's rnn_type means nothing to decoder: stateless)."""
    defaults = {"encoder": "conformer", "decoder": DECODER_OF_KIND.get(base.get("model"))}
    return {k: v for k, v in base.items()
            if not (k.endswith("_conf") and k[:-5] in defaults and k[:-5] in raw
                    and raw[k[:-5]] != base.get(k[:-5], defaults[k[:-5]]))}


def apply_override(config, item, source, known):
    """``config`` with one ``KEY=VALUE`` override applied; a new dict. The top key must be one of
    ``known`` and every key above the last must be a mapping (or absent: it is created)."""
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"{source}: --set {item!r}: expected KEY=VALUE (dotted keys: kd_conf.alpha=0.3)")
    if path[0] not in known:
        raise ConfigError(f"{source}: --set {item!r}: no config key {path[0]!r}; keys: {sorted(known)}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: --set {item!r}: the value is not valid YAML: {e}") from None
    out = copy.deepcopy(config)
    node = out
    for depth, name in enumerate(path[:-1]):
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: --set {item!r}: {'.'.join(path[:depth + 1])} is {node!r}, not a mapping "
                              "with keys to set")
    node[path[-1]] = value
    return out


def read_config(path, overrides=(), known=None):
    """A config file's keys after its ``base:`` chain and the ``KEY=VALUE`` overrides (not yet resolved:
    the caller checks the keys and fills in defaults). ``known``: the top-level keys an override may set."""
    path = Path(path)
    config = _read_inherited(path)
    known = set(known if known is not None else MODEL_KEYS | TRAIN_KEYS)
    for item in overrides:
        config = apply_override(config, item, path, known)
    return config


def config_source(path, overrides=()):
    """How errors name a config: its file, and the overrides applied to it."""
    return f"{path} (with --set {' '.join(overrides)})" if overrides else str(path)


def load_config(path, overrides=()):
    return resolve_config(read_config(path, overrides), source=config_source(path, overrides))


def model_part(config):
    return {k: v for k, v in config.items() if k in MODEL_KEYS}
