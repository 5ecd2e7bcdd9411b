"""Shared fixtures: tiny data dirs built from speech synthesized on the spot (espeak-ng + sox), and tiny
models trained on them once per test run (shared by pytest-xdist's workers too: see ``built_once``)."""
import contextlib
import fcntl
import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kdtool.data.datadir import DataDir

REPO = Path(__file__).resolve().parents[1]
SENTENCES = {
    "spka-u1": "THE QUICK BROWN FOX",
    "spka-u2": "JUMPS OVER THE LAZY DOG",
    "spka-u3": "A LITTLE KNOWLEDGE IS A DANGEROUS THING",
    "spkb-u1": "WHERE THERE IS SMOKE THERE IS FIRE",
    "spkb-u2": "TIME FLIES LIKE AN ARROW",
    "spkb-u3": "ALL THAT GLITTERS IS NOT GOLD",
}


def speak(text, wav, rate=16000, voice="en-us"):
    """Synthesize ``text`` into a ``rate`` Hz 16-bit mono wav (or flac, by suffix)."""
    raw = Path(f"{wav}.raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text.lower()], check=True)
    subprocess.run(["sox", str(raw), "-b", "16", "-c", "1", str(wav), "rate", str(rate)], check=True)
    raw.unlink()
    return Path(wav)


def built_once(tmp_path_factory, name, build):
    """A dir that ``build(dir)`` fills, made once per test run. Under pytest-xdist (CI: ``-n 2``) the workers
    share it: the first to ask builds it under a lock while the other waits, so that a tiny model is trained
    once, not once per worker, and every worker's tests see the same files."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        d = tmp_path_factory.mktemp(name)
        build(d)
        return d
    root = tmp_path_factory.getbasetemp().parent / "shared"  # this run's dir, above the workers' own
    root.mkdir(exist_ok=True)
    d, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(d, ignore_errors=True)  # a worker that failed half-way
            d.mkdir()
            build(d)
            done.touch()
    return d


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (CI: ``-n 2 --dist loadscope --no-loadscope-reorder``) a module's tests run on one
    worker, so that its module-scoped fixtures are built once, and the workers take the modules in this
    order: the --fast recipe first (most of one worker's time, while the other runs nearly all the rest).
    (--dist loadgroup would be the tool for groups across modules, but xdist 3.8 cannot name the groups
    of pytest 9's items: the shared models are ``built_once`` instead.)"""
    if "PYTEST_XDIST_WORKER" in os.environ:
        items.sort(key=lambda item: item.module.__name__ != "test_recipe")  # stable: the rest keep their order


def pytest_configure(config):
    """An xdist worker has a core of its own at most: torch and its subprocesses on one thread."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose much when the machine is busy
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module of them)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_entry(module, *args):
    """``python -m kdtool.bin.<module> args`` in this process (a subprocess would spend most of its time
    importing torch): ``.returncode``, ``.stdout`` (what it printed) and ``.stderr`` (what it logged at
    WARNING and above) as ``subprocess.run`` gives them. A traceback (an exception other than SystemExit)
    propagates. For the entry points' options and error paths; a test of ``python -m`` itself keeps its
    subprocess."""
    from kdtool.bin._common import run_main
    mod = importlib.import_module(f"kdtool.bin.{module}")
    stream, out = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    argv, sys.argv = sys.argv, [module, *map(str, args)]
    try:
        with contextlib.redirect_stdout(out):
            run_main(mod.main)
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
        root.removeHandler(handler)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=stream.getvalue())


@pytest.fixture(scope="session")
def tiny_wavs(tmp_path_factory):
    def build(d):
        for utt, text in SENTENCES.items():
            speak(text, d / f"{utt}.wav", voice="en-us" if utt.startswith("spka") else "en-gb+f3")
    d = built_once(tmp_path_factory, "wavs", build)
    return {utt: d / f"{utt}.wav" for utt in SENTENCES}


@pytest.fixture
def tiny_datadir(tmp_path, tiny_wavs):
    """A valid 6-utterance, 2-speaker data dir that a test may break."""
    return DataDir.write(tmp_path / "data" / "tiny",
                         wav_scp={u: str(p) for u, p in tiny_wavs.items()},
                         utt2spk={u: u.split("-")[0] for u in tiny_wavs},
                         text=dict(SENTENCES))


def copy_egs(dst):
    dst.mkdir(parents=True, exist_ok=True)
    """Copy the recipes (symlinks kept) under ``dst`` with ``dst/tools`` pointing at the real tools,
    so that a recipe's path.sh finds the installed venv."""
    shutil.copytree(REPO / "egs", dst / "egs", symlinks=True,
                    ignore=shutil.ignore_patterns("data", "dump", "exp", "data_fast", "dump_fast", "exp_fast",
                                                  "RESULTS.md", "plots"))
    (dst / "tools").symlink_to(REPO / "tools")
    return dst / "egs"


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_wavs):
    """Stage 2 output for the 6 tiny utterances: feature dir, CMVN stats and a char token list."""
    from kdtool.features.cmvn import compute_cmvn
    from kdtool.features.fbank import compute_fbank_job, merge_fbank_jobs
    from kdtool.tokens import build_token_list

    def build(root):
        data = DataDir.write(root / "data", wav_scp={u: str(p) for u, p in tiny_wavs.items()},
                             utt2spk={u: u.split("-")[0] for u in tiny_wavs}, text=dict(SENTENCES))
        compute_fbank_job(data.path, root / "fbank", 1, 1)
        merge_fbank_jobs(data.path, root / "fbank", 1)
        compute_cmvn(root / "fbank" / "feats.scp", root / "cmvn.ark")
        build_token_list(data.path / "text", root / "tokens", "char")

    root = built_once(tmp_path_factory, "feats", build)
    return {"feats": root / "fbank", "cmvn": root / "cmvn.ark", "tokens": root / "tokens"}


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (its subprocesses get OMP_NUM_THREADS=1 themselves)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_teacher(tiny_features, tmp_path_factory):
    """A tiny CTC teacher (1 Conformer block, d=32) trained 3 epochs on the 6 tiny utterances."""
    import torch

    from kdtool.train.config import resolve_config
    from kdtool.train.trainer import train

    f = tiny_features
    cfg = resolve_config({"model": "ctc", "encoder_conf": {"output_size": 32, "attention_heads": 2,
                                                           "linear_units": 64, "num_blocks": 2},
                          "max_epoch": 3, "batch_frames": 800, "keep_nbest_models": 1,
                          "scheduler_conf": {"warmup_steps": 5}})

    def build(d):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(cfg, d / "ctc_teacher", f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)
        finally:
            torch.set_num_threads(threads)
    return built_once(tmp_path_factory, "teacher", build) / "ctc_teacher"


def run_data_sh(recipe, *args, env=None, unset=()):
    """Run a recipe's local/data.sh; returns (exit code, stdout + stderr)."""
    import os
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    proc = subprocess.run(["bash", "local/data.sh", *args], cwd=recipe, env=full_env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def assert_c_sorted(path):
    proc = subprocess.run(["sort", "-c", str(path)], env={"LC_ALL": "C"}, capture_output=True, text=True)
    assert proc.returncode == 0, f"{path} is not sorted in byte order: {proc.stderr}"


# Tiny trained models of every kind, shared by the decoding tests (test_decode, test_maskctc_beam,
# test_benchmark_decode): trained once per session.
# Transformer encoders: espnet's conformer convolution sees a batch's padding, so only these give
# batch-independent encoder outputs (what the batched = unbatched checks through the runner need).
DECODE_ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2}
DECODE_DEC = {"attention_heads": 2, "linear_units": 64, "num_blocks": 2}
DECODE_KINDS = {
    "ctc": {"model": "ctc"},
    "ar": {"model": "ar", "decoder_conf": DECODE_DEC},
    "nar": {"model": "nar", "decoder_conf": DECODE_DEC},
    "transducer": {"model": "transducer", "decoder_conf": {"hidden_size": 32},
                   "joint_net_conf": {"joint_space_size": 32}},
}
# One utterance per step, a high peak learning rate, no SpecAugment: the 6 utterances are learnt
# well enough in a few seconds per model for CTC and attention to get most words right.
DECODE_TRAINING = {"encoder": "transformer", "encoder_conf": DECODE_ENC, "batch_frames": 200,
                   "keep_nbest_models": 1, "log_interval": 50, "specaug_conf": None, "optim_conf": {"lr": 0.01},
                   "scheduler_conf": {"warmup_steps": 10}}
DECODE_EPOCHS = {"ctc": 40, "ar": 40, "nar": 40, "transducer": 30}


@pytest.fixture(scope="session")
def models(tiny_features, tmp_path_factory):
    """A dir with one trained exp dir per kind: models / "nar" etc."""
    import torch

    from kdtool.train.config import resolve_config
    from kdtool.train.trainer import train

    f = tiny_features

    def build(root):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # models this small gain nothing from threads, and lose much on a busy machine
        try:
            for kind, conf in DECODE_KINDS.items():
                cfg = resolve_config({**conf, **DECODE_TRAINING, "max_epoch": DECODE_EPOCHS[kind]})
                train(cfg, root / kind, f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)
        finally:
            torch.set_num_threads(threads)
    return built_once(tmp_path_factory, "decode_models", build)


@pytest.fixture(scope="session")
def encoded(models, tiny_features):
    """kind -> (model, tokenizer, enc, enc_lens, utts): the 6 utterances, each encoded alone and
    padded into one batch, so that method-level comparisons do not depend on the encoder."""
    import torch

    from kdtool.models.load import load_trained
    from kdtool.train.dataset import SpeechDataset, collate

    out = {}
    for kind in DECODE_KINDS:
        t = load_trained(models / kind)
        ds = SpeechDataset(tiny_features["feats"], t.tokenizer, cmvn_path=models / kind / "cmvn.ark")
        with torch.no_grad():
            encs = [t.model.encode(b["feats"], b["feats_lens"])[0][0] for b in (collate([ds[u]]) for u in ds.utts)]
        enc = torch.nn.utils.rnn.pad_sequence(encs, batch_first=True)
        out[kind] = (t.model, t.tokenizer, enc, torch.tensor([len(e) for e in encs]), ds.utts)
    return out


def scrambled_decoder(model, seed):
    """``model`` with a randomly initialized masked LM: its varied, arbitrary scores test the order in
    which masks are filled harder than our weakly trained one (which fills in mostly spaces)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model


def all_blank(model):
    """A copy of ``model`` whose CTC head and joint network put all their mass on blank."""
    import copy

    import torch

    model = copy.deepcopy(model)
    for layer in ([model.ctc.ctc_lo] if getattr(model, "ctc", None) is not None else []) + (
            [model.joint_network.lin_out] if hasattr(model, "joint_network") else []):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        layer.bias.data[model.blank] = 1000.0
    return model


@pytest.fixture
def data_with_a_short_utterance(tiny_features, tmp_path):
    """The tiny feature dir plus spkc-u1: 6 frames, which conv2d subsampling turns into none."""
    import kaldiio
    import numpy as np

    data = tmp_path / "short"
    shutil.copytree(tiny_features["feats"], data)
    ark = tmp_path / "short.ark"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{tmp_path / 'short.scp'}") as w:
        w("spkc-u1", np.random.default_rng(0).normal(size=(6, 80)).astype(np.float32))
    for name, line in (("feats.scp", (tmp_path / "short.scp").read_text().strip()), ("utt2num_frames", "spkc-u1 6"),
                       ("text", "spkc-u1 HI"), ("utt2spk", "spkc-u1 spkc")):
        with open(data / name, "a") as f:
            f.write(line + "\n")
    return data
