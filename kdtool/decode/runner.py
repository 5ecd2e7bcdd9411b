"""Stage 6: decode every utterance of a feature dir with a trained model.

A decode config (YAML) names a ``method`` and its options; each method's options and defaults
are in METHODS. Writes into the output dir (each file atomically):

    text               <utt> <hypothesis>, every utterance, sorted; an empty hypothesis is the id alone
    decode_time        <utt> <seconds>: a batch's wall time (encoder + search, not feature reading)
                       split over its utterances in proportion to their frames
    decode_info.json   model_dir, kind, params, size_mb, method, config, command, num_threads, device,
                       utterances

On a GPU (``device`` cuda or cuda:N) the model and each batch go to the device, hypotheses come
back as token-id lists; the timing is still wall time (so the RTF is that of the GPU).
"""
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from kdtool.data.datadir import c_sorted
from kdtool.decode import maskctc, onnx
from kdtool.decode.ar import ARBeamSearch
from kdtool.decode.ctc import ctc_greedy_search
from kdtool.decode.streaming import streaming_greedy
from kdtool.decode.transducer import SEARCH_TYPES, TransducerBeamSearch, greedy_search
from kdtool.errors import ConfigError
from kdtool.models.asr import subsampled_length
from kdtool.models.load import load_trained, model_device, resolve_device
from kdtool.train.dataset import SpeechDataset, collate
from kdtool.utils.atomic import atomic_open, write_lines
from kdtool.utils.files import file_sha256
from kdtool.utils.yamlfile import read_yaml


def _needs_ctc(model):
    if getattr(model, "ctc", None) is None:
        raise ValueError(f"ctc_greedy needs a CTC head; this {model.kind} model has none (trained with ctc_weight 0)")


def _needs_kind(kind, method):
    def check(model):
        if model.kind != kind:
            raise ValueError(f"{method} decodes {kind} models, not a {model.kind} model")
    return check


def _needs_streaming_encoder(model):
    _needs_kind("transducer", "transducer_streaming")(model)
    if not hasattr(model.encoder, "chunk_forward"):
        raise ValueError("transducer_streaming needs a streaming encoder (encoder: streaming_conformer)")


def _streaming_search(model, options):
    """Chunk by chunk from the features (the encoder never sees the future beyond a chunk)."""
    left = options["left_context"] or None  # 0: the left context the model was trained with

    def search(feats, feats_lens):
        return [streaming_greedy(model, f[:n], options["chunk_size"], left, options["max_symbols_per_frame"])[0]
                for f, n in zip(feats, feats_lens.tolist())]
    search.takes_feats = True
    return search


@dataclass
class Method:
    defaults: dict  # every option the method takes; batch_size only where it decodes a batch at once
    check: Callable  # model -> None, or a ValueError saying why this model cannot be decoded so
    build: Callable  # (model, options without batch_size) -> fn(enc, enc_lens) -> lists of token ids
    name: Callable  # options -> the method's name in decode_info.json, e.g. ar_beam10


METHODS = {
    "ctc_greedy": Method({"batch_size": 16}, _needs_ctc, lambda m, o: partial(ctc_greedy_search, m),
                         lambda o: "ctc_greedy"),
    # beam searches go one utterance at a time; batch_size batches the encoder
    "ar_beam": Method({"batch_size": 16, "beam_size": 10, "ctc_weight": 0.3, "penalty": 0.0, "maxlenratio": 0.0,
                       "minlenratio": 0.0},
                      _needs_kind("ar", "ar_beam"), lambda m, o: ARBeamSearch(m, **o),
                      lambda o: f"ar_beam{o['beam_size']}"),
    "maskctc_greedy": Method({"batch_size": 16, "threshold": 0.99, "n_iterations": 10}, maskctc.check_model,
                             lambda m, o: partial(maskctc.maskctc_greedy, m, **o), lambda o: "maskctc_greedy"),
    # ctc_weight: final score = decoder log-prob of the filled masks + ctc_weight * CTC log-likelihood;
    # length_variants: also try one mask less / more at each run of masks (needs ctc_weight > 0)
    "maskctc_beam": Method({"batch_size": 16, "beam_size": 5, "threshold": 0.99, "n_iterations": 10,
                            "ctc_weight": 0.3, "length_variants": False}, maskctc.check_model,
                           lambda m, o: maskctc.MaskCTCBeamSearch(m, **o),
                           lambda o: f"maskctc_beam{o['beam_size']}" + ("_lenvar" if o["length_variants"] else "")),
    "transducer_greedy": Method({"batch_size": 16, "max_symbols_per_frame": 5},
                                _needs_kind("transducer", "transducer_greedy"),
                                lambda m, o: partial(greedy_search, m, **o), lambda o: "transducer_greedy"),
    # max_sym_exp: tsd's expansions per frame (espnet's meaning: at most max_sym_exp - 1 labels);
    # u_max: alsd's longest output
    "transducer_beam": Method({"batch_size": 16, "beam_size": 4, "search_type": "default", "max_sym_exp": 2,
                               "u_max": 50, "score_norm": True},
                              _needs_kind("transducer", "transducer_beam"), lambda m, o: TransducerBeamSearch(m, **o),
                              lambda o: f"transducer_beam{o['beam_size']}"
                                        + ("" if o["search_type"] == "default" else f"_{o['search_type']}")),
    # chunk_size: encoder frames per chunk (x4 input frames = 40 ms each with conv2d)
    "transducer_streaming": Method({"chunk_size": 16, "left_context": 0, "max_symbols_per_frame": 5},
                                   _needs_streaming_encoder, _streaming_search,
                                   lambda o: f"streaming_chunk{o['chunk_size']}"),
}
BACKENDS = ("torch", "onnx", "onnx_int8")  # onnx: the exported graphs (kdtool.export) in onnxruntime


def _onnx_streaming_search(model, options):
    """transducer_streaming on the exported chunk-step graphs: their left context is fixed at export."""
    if model.kind != "transducer":
        raise ValueError(f"transducer_streaming decodes transducer exports, not a {model.kind} export")
    left = int(model.export.metadata["left_context"])
    if options["left_context"] not in (0, left):
        raise ValueError(f"{model.export.export_dir}: exported with left_context {left}, not "
                         f"{options['left_context']}; decode with left_context 0 or {left}, or export again "
                         "with --left_context")

    def search(feats, feats_lens):
        return [onnx.streaming_greedy(model, f[:n], options["chunk_size"], options["max_symbols_per_frame"])
                for f, n in zip(feats, feats_lens.tolist())]
    search.takes_feats = True
    return search


def _onnx_full_context_greedy(model, options):
    """transducer_greedy on a streaming export: the whole utterance as one chunk, whose attention sees
    every frame, is the encoder's full-context output (its convolutions are causal either way)."""
    search = _onnx_streaming_search(model, {**options, "chunk_size": 1 << 30, "left_context": 0})
    search.takes_feats = True
    return search


def _export_has_ctc(model):
    if not model.ctc:
        raise ValueError(f"{model.export.export_dir}: ctc_greedy needs the CTC graph (model.onnx); "
                         f"a {model.kind} export has none")


# The methods the onnx backend runs: the same search code on the graphs (kdtool.decode.onnx), or its own.
ONNX_METHODS = {"ctc_greedy": Method(METHODS["ctc_greedy"].defaults, _export_has_ctc, METHODS["ctc_greedy"].build,
                                     METHODS["ctc_greedy"].name),
                "maskctc_greedy": METHODS["maskctc_greedy"],
                "maskctc_beam": METHODS["maskctc_beam"],
                "transducer_greedy": Method(METHODS["transducer_greedy"].defaults, lambda m: None,
                                            _onnx_full_context_greedy, METHODS["transducer_greedy"].name),
                "transducer_streaming": Method(METHODS["transducer_streaming"].defaults, lambda m: None,
                                               _onnx_streaming_search, METHODS["transducer_streaming"].name)}
# tsd emits at most max_sym_exp - 1 labels per frame: 1 would emit none
MINIMUM = {"batch_size": 1, "beam_size": 1, "max_symbols_per_frame": 1, "max_sym_exp": 2, "u_max": 1,
           "n_iterations": 0, "chunk_size": 1, "left_context": 0}
CHOICES = {"search_type": SEARCH_TYPES}


def resolve_decode_config(config, source="decode config"):
    """Check a decode config and fill in its method's defaults: returns (method, options)."""
    if not isinstance(config, dict) or "method" not in config:
        raise ConfigError(f"{source}: expected a mapping with a 'method' key (one of {sorted(METHODS)})")
    method = config["method"]
    if method not in METHODS:
        raise ConfigError(f"{source}: method: unknown {method!r}; choose one of {sorted(METHODS)}")
    defaults = METHODS[method].defaults
    unknown = sorted(set(config) - {"method"} - set(defaults))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for method {method}; allowed: {sorted(defaults)}")
    options = {**defaults, **{k: v for k, v in config.items() if k != "method"}}
    for key, value in options.items():
        want = type(defaults[key])
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        ok = ok or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (key in MINIMUM and value < MINIMUM[key]):
            at_least = f" >= {MINIMUM[key]}" if key in MINIMUM else ""
            raise ConfigError(f"{source}: {key}: expected a{'n' if want is int else ''} {want.__name__}{at_least}, "
                              f"not {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{source}: {key}: unknown {value!r}; choose one of {list(CHOICES[key])}")
    return method, {k: float(v) if isinstance(defaults[k], float) else v for k, v in options.items()}


def load_decode_config(path):
    return resolve_decode_config(read_yaml(path, "decode config"), source=str(path))


def default_export_dir(model_dir):
    return Path(model_dir) / "export"


def decode_inputs(model_dir, data_dir, method, options, backend="torch", export_dir=None):
    """What a decode dir's hypotheses depend on: the weights, the features' index and the config
    (and for the onnx backends, the graphs: export_info.json holds their sha256)."""
    inputs = {"model_sha256": file_sha256(Path(model_dir) / "model.pth"),
              "feats_scp_sha256": file_sha256(Path(data_dir) / "feats.scp"),
              "config": {"method": method, **options}}
    if backend != "torch":
        export_dir = Path(export_dir or default_export_dir(model_dir))
        inputs.update(backend=backend, export_info_sha256=file_sha256(export_dir / "export_info.json"))
    return inputs


def up_to_date(out_dir, model_dir, data_dir, method, options, backend="torch", export_dir=None):
    """Whether ``out_dir``'s text was made from these inputs (a rerun of stage 6 skips such dirs;
    retrained weights or another config decode again)."""
    info_path = Path(out_dir) / "decode_info.json"
    if not (info_path.exists() and (Path(out_dir) / "text").exists()):
        return False
    try:
        return json.loads(info_path.read_text()).get("inputs") == decode_inputs(model_dir, data_dir, method, options,
                                                                                backend, export_dir)
    except FileNotFoundError:
        return False  # decode_dir reports the missing file


def decode_dir(model_dir, data_dir, method, options, out_dir, num_threads=1, command=None, device="cpu",
               backend="torch", export_dir=None):
    """Decode ``data_dir`` with the model of ``model_dir`` on ``device``; returns decode_info as a dict.
    ``backend`` onnx / onnx_int8: with the fp32 / int8 graphs of ``export_dir`` (default
    ``<model_dir>/export``, made from this model) in onnxruntime on the CPU, from raw fbank."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; choose one of {list(BACKENDS)}")
    if backend != "torch" and method not in ONNX_METHODS:
        raise ValueError(f"method {method} has no onnx backend; it has {sorted(ONNX_METHODS)}")
    if backend != "torch" and str(device) != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU, not --device {device}")
    spec = (ONNX_METHODS if backend != "torch" else METHODS)[method]
    device = resolve_device(device)  # an unusable device fails before any work
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)  # single-thread by default: the RTF of one CPU core
    load_before = os.getloadavg()[0]
    try:
        trained = load_trained(model_dir, device=device)
        model, tokenizer, info = trained.model, trained.tokenizer, trained.info
        cmvn = Path(model_dir) / "cmvn.ark"
        if backend != "torch":
            export_dir = Path(export_dir or default_export_dir(model_dir))
            # refused unless made from this model's weights and tokens, its graphs matching its tokens.txt
            model = onnx.load_onnx_model(export_dir, int8=backend == "onnx_int8", num_threads=num_threads,
                                         model_dir=model_dir)
            cmvn = None  # inside the graphs: they take raw fbank
            info = {**info, "backend": backend, "export_dir": str(export_dir),
                    "onnx_files": sorted(model.export.files.values()), "size_mb": round(model.export.size_mb, 3)}
        # the weights (and graphs) as loaded, before decoding
        inputs = decode_inputs(model_dir, data_dir, method, options, backend, export_dir)
        search, batch_size = build_search(model, method, options, spec)  # before reading any features
        ds = SpeechDataset(data_dir, tokenizer, cmvn_path=cmvn, require_text=False)
        if len(ds) == 0:
            raise ValueError(f"{data_dir}: no utterances to decode")
        hyps, seconds = decode_dataset(model, tokenizer, ds, search, batch_size)
    finally:
        torch.set_num_threads(previous_threads)

    out = Path(out_dir)
    write_lines(out / "text", (f"{u} {hyps[u]}".rstrip() for u in c_sorted(hyps)))
    write_lines(out / "decode_time", (f"{u} {seconds[u]:.6f}" for u in c_sorted(seconds)))
    # an export's rows stay apart from the PyTorch model's in RESULTS.md: ctc_greedy_onnx_int8
    name = spec.name(options) + ("" if backend == "torch" else f"_{backend}")
    info = {**info, "method": name, "config": {"method": method, **options},
            "command": command, "num_threads": num_threads, "device": str(device), "utterances": len(ds),
            "data_dir": str(data_dir), "inputs": inputs,
            # other work on the same cores slows decoding: make_results marks such RTFs
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpu_count": os.cpu_count()}
    with atomic_open(out / "decode_info.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return info


def build_search(model, method, options, spec=None):
    """(search, batch_size) for ``model``: a ValueError if the method cannot decode this model."""
    spec = spec or METHODS[method]
    spec.check(model)
    search = spec.build(model, {k: v for k, v in options.items() if k != "batch_size"})
    return search, options.get("batch_size", 1)


def search_batch(model, search, batch):
    """Token ids of a collated batch: the encoder then the search (or the search alone if it
    takes_feats), on the model's device. Call under torch.no_grad()."""
    device = model.device if isinstance(model, onnx.OnnxModel) else model_device(model)
    feats, feats_lens = batch["feats"].to(device), batch["feats_lens"].to(device)
    if getattr(search, "takes_feats", False):
        ids = search(feats, feats_lens)
    else:
        ids = search(*model.encode(feats, feats_lens))
    if device.type == "cuda":  # kernels run asynchronously: the batch's time must include them all
        torch.cuda.synchronize(device)
    return ids


def hyp_text(tokenizer, ids):
    """A hypothesis as written to ``text``: the tokens' text, single-spaced."""
    return " ".join(tokenizer.ids2text(ids).split())


def decode_dataset(model, tokenizer, ds, search, batch_size):
    """({utt: text}, {utt: seconds}) for every utterance of ``ds``, ``batch_size`` at a time; a
    batch's time is that of ``search_batch`` (encoder and search, not reading the features)."""
    # conv2d subsampling turns too short an input into no frames at all: nothing to decode
    out_frames = model.subsampled_length if isinstance(model, onnx.OnnxModel) else partial(subsampled_length, model)
    short = [u for u in ds.utts if out_frames(ds.num_frames[u]) < 1]
    if short:
        logging.warning("%d utterance(s) too short for the encoder's subsampling get an empty hypothesis: %s",
                        len(short), ", ".join(f"{u} ({ds.num_frames[u]} frames)" for u in short[:5]))
    hyps, seconds = dict.fromkeys(short, ""), dict.fromkeys(short, 0.0)
    # longest first, so that the first batches show the worst case (memory, speed) early
    order = sorted((u for u in ds.utts if u not in hyps), key=lambda u: (-ds.num_frames[u], u))
    with torch.no_grad(), tqdm(total=len(ds), unit="utt", desc="decode", mininterval=5) as bar:
        bar.update(len(short))
        for i in range(0, len(order), batch_size):
            batch = collate([ds[u] for u in order[i:i + batch_size]])
            start = time.perf_counter()
            ids = search_batch(model, search, batch)
            elapsed = time.perf_counter() - start
            frames = batch["feats_lens"].tolist()
            for utt, utt_ids, n in zip(batch["utts"], ids, frames):
                hyps[utt] = hyp_text(tokenizer, utt_ids)
                seconds[utt] = elapsed * n / sum(frames)
            bar.update(len(frames))
    return hyps, seconds
