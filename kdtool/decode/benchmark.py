"""Decoding speed of trained models on one CPU thread: every search against the encoder alone.

Each model decodes the same utterances with every method of ``BENCHMARK`` that its kind allows
(the method's own model check decides), through the runner's loop (``decode_dataset``: the same
batching and timing as stage 6), after one untimed warm-up batch; a method's time is the fastest
of ``repeats`` runs. The ``encoder`` row runs that loop with a search that finds nothing: the floor
every search adds to, so ``x_encoder`` (a method's RTF over the encoder's) says what the search
itself costs. One row per (model, method):

    model_dir, kind, params, method, config, n_utts, audio_seconds, decode_seconds, rtf, x_encoder, wer,
    same_as_espnet

WER (%) is scored against the data dir's ``text`` (None without one, and for the encoder row).
same_as_espnet, for maskctc_greedy only: how many utterances espnet2's own MaskCTCInference decodes
to exactly the same text (run untimed, one utterance at a time, on the same encoder outputs).
"""
import json
import logging
from pathlib import Path

import torch

from kdtool.data.datadir import DataDir
from kdtool.decode.maskctc import espnet_maskctc_greedy
from kdtool.decode.runner import (METHODS, build_search, decode_dataset, hyp_text, resolve_decode_config,
                                  search_batch)
from kdtool.errors import ConfigError
from kdtool.features.frames import audio_seconds
from kdtool.models.asr import subsampled_length
from kdtool.models.load import load_trained
from kdtool.scoring.wer import score
from kdtool.train.dataset import SpeechDataset, collate
from kdtool.utils.atomic import atomic_open
from kdtool.utils.environment import environment
from kdtool.utils.yamlfile import read_yaml

ENCODER = "encoder"
# (method, options over its defaults); a model gets those its kind allows
BENCHMARK = [
    ("ctc_greedy", {}),
    ("maskctc_greedy", {}),
    ("maskctc_beam", {"beam_size": 1}),
    ("maskctc_beam", {"beam_size": 5}),
    ("maskctc_beam", {"beam_size": 10}),
    ("ar_beam", {"beam_size": 10}),
    ("transducer_beam", {}),
]


def _no_search(enc, enc_lens):
    """The encoder floor: a search that finds nothing."""
    return [[] for _ in range(len(enc_lens))]


def _timed_decode(model, tokenizer, ds, search, batch_size, repeats):
    """({utt: text}, seconds): the fastest of ``repeats`` runs (the least disturbed by the rest of the
    machine), after the first batch once untimed, so that no method pays for warming up the process
    (first calls of each operator with these shapes, memory allocation)."""
    longest = sorted((u for u in ds.utts if subsampled_length(model, ds.num_frames[u]) >= 1),
                     key=lambda u: -ds.num_frames[u])  # the runner's first batch
    if longest:
        with torch.no_grad():
            search_batch(model, search, collate([ds[u] for u in longest[:batch_size]]))
    best = float("inf")
    for _ in range(repeats):
        hyps, seconds = decode_dataset(model, tokenizer, ds, search, batch_size)
        best = min(best, sum(seconds.values()))
    return hyps, best


def same_as_espnet(model, tokenizer, ds, hyps, options, batch_size):
    """How many of maskctc_greedy's ``hyps`` espnet's MaskCTCInference reproduces exactly; batches as the
    runner makes them (longest first), so both searches see the same encoder outputs."""
    order = sorted((u for u in ds.utts if subsampled_length(model, ds.num_frames[u]) >= 1),
                   key=lambda u: (-ds.num_frames[u], u))
    same = len(ds.utts) - len(order)  # too short to encode: both give nothing
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            utts = order[i:i + batch_size]
            batch = collate([ds[u] for u in utts])
            enc, enc_lens = model.encode(batch["feats"], batch["feats_lens"])
            ref = espnet_maskctc_greedy(model, tokenizer.tokens, enc, enc_lens, options["threshold"],
                                        options["n_iterations"])
            same += sum(hyp_text(tokenizer, ids) == hyps[u] for u, ids in zip(utts, ref))
    return same


# what a row varies itself: a decode config's own values of these do not apply
VARIED = ("batch_size", "beam_size")


def read_settings(paths):
    """{method: options} from decode configs (``conf/decode_*.yaml``): each file's own keys but
    ``VARIED``, applied to every benchmarked row of its method, so that the benchmark decodes as the
    recipe does (e.g. its Mask-CTC threshold)."""
    settings = {}
    for path in paths:
        raw = read_yaml(path, "decode config")
        method, _ = resolve_decode_config(raw, source=str(path))  # checks keys and types
        if method in settings:
            raise ConfigError(f"{path}: a second decode config for {method}; give one per method")
        settings[method] = {k: v for k, v in raw.items() if k != "method" and k not in VARIED}
    return settings


def _methods(model, batch_size, settings=None):
    """(name, config, search, batch_size) for every benchmarked method this model allows;
    ``settings``: {method: options} over the defaults (``read_settings``)."""
    out, skipped = [], set()
    for method, overrides in BENCHMARK:
        overrides = {**(settings or {}).get(method, {}), **overrides}
        if "batch_size" in METHODS[method].defaults:
            overrides = {**overrides, "batch_size": batch_size}
        method, options = resolve_decode_config({"method": method, **overrides}, source="benchmark")
        try:
            search, size = build_search(model, method, options)
        except ValueError as e:  # this kind cannot be decoded so
            if method not in skipped:
                logging.info("%s skipped: %s", method, e)
                skipped.add(method)
            continue
        out.append((METHODS[method].name(options), {"method": method, **options}, search, size))
    return out


def benchmark_model(model_dir, data_dir, batch_size=16, max_utts=None, repeats=1, settings=None):
    """Rows (dicts) for one model: the encoder floor, then each method its kind allows."""
    trained = load_trained(model_dir)
    model, tokenizer = trained.model, trained.tokenizer
    ds = SpeechDataset(data_dir, tokenizer, cmvn_path=Path(model_dir) / "cmvn.ark", require_text=False)
    ds.utts = ds.utts[:max_utts]  # sorted ids: the same utterances for every model
    if not ds.utts:
        raise ValueError(f"{data_dir}: no utterances to decode")
    data, utts = DataDir(data_dir), set(ds.utts)
    ref = {u: t for u, t in data.read("text").items() if u in utts} if data.has("text") else None
    audio = sum(audio_seconds(ds.num_frames[u]) for u in ds.utts)

    rows = []
    searches = [(ENCODER, {"batch_size": batch_size}, _no_search, batch_size)] + _methods(model, batch_size, settings)
    for name, config, search, size in searches:
        hyps, seconds = _timed_decode(model, tokenizer, ds, search, size, repeats)
        wer = score(ref, hyps).summary()["wer"] if ref is not None and name != ENCODER else None
        same = (same_as_espnet(model, tokenizer, ds, hyps, config, size) if config.get("method") == "maskctc_greedy"
                else None)
        rows.append({**trained.info, "method": name, "config": config, "n_utts": len(ds.utts),
                     "audio_seconds": audio, "decode_seconds": seconds, "rtf": seconds / audio, "wer": wer,
                     "same_as_espnet": same})
        logging.info("%s %s: RTF %.4f%s", model_dir, name, seconds / audio,
                     "" if wer is None else f", WER {wer:.2f}%")
    floor = rows[0]["rtf"]
    for row in rows:
        row["x_encoder"] = row["rtf"] / floor if floor > 0 else None
    return rows


def run_benchmark(model_dirs, data_dir, out_dir, batch_size=16, max_utts=None, repeats=1, command=None,
                  settings=None):
    """Benchmark every model on one CPU thread; write benchmark.json and benchmark.md; return the rows.
    ``settings``: {method: options} over the runner's defaults (``read_settings``)."""
    settings = settings or {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the RTF of one core, as stage 6 measures it
    try:
        rows = [row for model_dir in model_dirs
                for row in benchmark_model(model_dir, data_dir, batch_size, max_utts, repeats, settings)]
    finally:
        torch.set_num_threads(previous_threads)
    out = Path(out_dir)
    setup = {"data_dir": str(data_dir), "batch_size": batch_size, "max_utts": max_utts, "repeats": repeats,
             "num_threads": 1, "settings": settings, "command": command, "environment": dict(environment())}
    with atomic_open(out / "benchmark.json", "w", encoding="utf-8") as f:
        json.dump({**setup, "rows": rows}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with atomic_open(out / "benchmark.md", "w", encoding="utf-8") as f:
        f.write(markdown(rows, setup))
    return rows


COLUMNS = ("model", "kind", "params (M)", "method", "options", "RTF", "x encoder", "WER", "same as espnet")


def markdown(rows, setup):
    """The rows as a Markdown table, under the set-up they were measured with."""
    first = rows[0]
    lines = ["# Decoding speed", "",
             f"{first['n_utts']} utterances ({first['audio_seconds']:.1f} s of audio) of `{setup['data_dir']}`, "
             f"one CPU thread, batch_size {setup['batch_size']}, the fastest of {setup['repeats']} run(s). "
             "RTF = decoding seconds / audio seconds (encoder and search, not reading features); "
             "x encoder = RTF / the encoder-alone RTF of the same model; WER in %; same as espnet: "
             "utterances where espnet2's MaskCTCInference gives the same text as maskctc_greedy.", ""]
    lines += [f"- {name}: `{value}`" for name, value in setup["environment"].items()]
    if setup["command"]:
        lines += [f"- command: `{setup['command']}`"]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        options = ", ".join(f"{k} {v}" for k, v in r["config"].items() if k not in ("method", "batch_size"))
        cells = (Path(r["model_dir"]).name, r["kind"], f"{r['params'] / 1e6:.2f}", r["method"], options or "-",
                 f"{r['rtf']:.4f}",
                 _fmt(r["x_encoder"]), _fmt(r["wer"]),
                 "-" if r.get("same_as_espnet") is None else f"{r['same_as_espnet']}/{r['n_utts']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value):
    return "-" if value is None else f"{value:.2f}"
