"""Build a model from an ESPnet-style config:

    model: ar                    # ar | nar | ctc | transducer
    encoder: conformer           # conformer | transformer
    encoder_conf: {output_size: 256, attention_heads: 4, linear_units: 1024, num_blocks: 12}
                                 # (+ subsampling_channels: 64 for a narrow conv front-end)
    decoder: transformer         # ar: transformer; nar: mlm; transducer: rnn (LSTM) or stateless
    decoder_conf: {...}
    joint_net_conf: {...}        # transducer only
    specaug_conf: {...}          # SpecAugment; null disables it
    model_conf: {ctc_weight: 0.3, lsm_weight: 0.1}

Unknown keys, kinds or component names raise ConfigError before any training starts.
"""
import inspect

from kdtool.errors import ConfigError
from kdtool.models.asr import EMBED_INITS, MODEL_CLASSES, ENCODERS, DECODERS

MODEL_KEYS = {"model", "encoder", "encoder_conf", "decoder", "decoder_conf", "joint_net_conf", "specaug_conf",
              "model_conf"}
DECODERS_OF_KIND = {"ar": ("transformer",), "nar": ("mlm",), "transducer": ("rnn", "stateless"), "ctc": ()}
DECODER_OF_KIND = {kind: names[0] if names else None for kind, names in DECODERS_OF_KIND.items()}  # the default


def _check_kwargs(what, cls, conf, skip=(), extra=()):
    """Reject keys the constructor does not take (besides ``extra``, which kdtool handles), with the
    list of those it does."""
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted({p for p in params if p not in ("self", *skip) and params[p].kind != params[p].VAR_KEYWORD}
                     | set(extra))
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {unknown}; allowed: {allowed}")


def build_model(config, vocab_size, input_size=80):
    """Return the model described by ``config`` for a token list of ``vocab_size`` entries."""
    unknown = sorted(set(config) - MODEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown model config key(s) {unknown}; allowed: {sorted(MODEL_KEYS)}")
    kind = config.get("model")
    if kind not in MODEL_CLASSES:
        raise ConfigError(f"model: unknown kind {kind!r}; choose one of {sorted(MODEL_CLASSES)}")
    enc_name = config.get("encoder", "conformer")
    if enc_name not in ENCODERS:
        raise ConfigError(f"encoder: unknown {enc_name!r}; choose one of {sorted(ENCODERS)}")
    enc_conf = dict(config.get("encoder_conf") or {})
    _check_kwargs(f"encoder_conf ({enc_name})", ENCODERS[enc_name], enc_conf, skip=("input_size",),
                  extra=("subsampling_channels",))
    channels = enc_conf.get("subsampling_channels")
    if channels is not None:
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ConfigError(f"encoder_conf: subsampling_channels must be a positive integer, not {channels!r}")
        if not str(enc_conf.get("input_layer", "conv2d")).startswith("conv2d"):
            raise ConfigError(f"encoder_conf: subsampling_channels needs a conv2d input_layer, "
                              f"not {enc_conf['input_layer']!r}")

    dec_name = config.get("decoder", DECODER_OF_KIND[kind])
    dec_conf = dict(config.get("decoder_conf") or {})
    if DECODER_OF_KIND[kind] is None:
        if config.get("decoder") or dec_conf:
            raise ConfigError("decoder: a ctc model has no decoder; remove decoder/decoder_conf")
    elif dec_name not in DECODERS_OF_KIND[kind]:
        raise ConfigError(f"decoder: a {kind} model takes decoder: {' or '.join(DECODERS_OF_KIND[kind])}, "
                          f"not {dec_name!r}")
    else:
        _check_kwargs(f"decoder_conf ({dec_name})", DECODERS[dec_name], dec_conf,
                      skip=("vocab_size", "encoder_output_size", "embed_pad"))
    if config.get("joint_net_conf") and kind != "transducer":
        raise ConfigError(f"joint_net_conf: only a transducer has a joint network, not a {kind} model")

    cls = MODEL_CLASSES[kind]
    model_conf = dict(config.get("model_conf") or {})
    _check_kwargs(f"model_conf ({kind})", cls, model_conf,
                  skip=("vocab_size", "input_size", "encoder", "encoder_conf", "decoder_conf", "joint_net_conf",
                        "specaug_conf", "decoder"))
    if model_conf.get("embed_init", EMBED_INITS[0]) not in EMBED_INITS:
        raise ConfigError(f"model_conf: embed_init must be {' or '.join(map(repr, EMBED_INITS))}, "
                          f"not {model_conf['embed_init']!r}")
    extra = {"joint_net_conf": dict(config.get("joint_net_conf") or {})} if kind == "transducer" else {}
    if DECODER_OF_KIND[kind] is not None:
        extra["decoder_conf"] = dec_conf
    if kind == "transducer":
        extra["decoder"] = dec_name
    return cls(vocab_size=vocab_size, input_size=input_size, encoder=enc_name, encoder_conf=enc_conf,
               specaug_conf=config.get("specaug_conf"), **extra, **model_conf)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model):
    """Size of the weights on disk in float32, in MB (10^6 bytes), as papers report it."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
