"""Shared fixtures: tiny data dirs built from speech synthesized on the spot (espeak-ng + sox)."""
import shutil
import subprocess
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    return {utt: speak(text, d / f"{utt}.wav", voice="en-us" if utt.startswith("spka") else "en-gb+f3")
            for utt, text in SENTENCES.items()}


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
                    ignore=shutil.ignore_patterns("data", "dump", "exp", "exp_fast", "RESULTS.md"))
    (dst / "tools").symlink_to(REPO / "tools")
    return dst / "egs"


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_wavs):
    """Stage 2 output for the 6 tiny utterances: feature dir, CMVN stats and a char token list."""
    from kdtool.features.cmvn import compute_cmvn
    from kdtool.features.fbank import compute_fbank_job, merge_fbank_jobs
    from kdtool.tokens import build_token_list

    root = tmp_path_factory.mktemp("feats")
    data = DataDir.write(root / "data", wav_scp={u: str(p) for u, p in tiny_wavs.items()},
                         utt2spk={u: u.split("-")[0] for u in tiny_wavs}, text=dict(SENTENCES))
    compute_fbank_job(data.path, root / "fbank", 1, 1)
    merge_fbank_jobs(data.path, root / "fbank", 1)
    compute_cmvn(root / "fbank" / "feats.scp", root / "cmvn.ark")
    build_token_list(data.path / "text", root / "tokens", "char")
    return {"feats": root / "fbank", "cmvn": root / "cmvn.ark", "tokens": root / "tokens"}


@pytest.fixture(scope="session")
def tiny_teacher(tiny_features, tmp_path_factory):
    """A tiny CTC teacher (1 Conformer block, d=32) trained 3 epochs on the 6 tiny utterances."""
    import torch

    from kdtool.train.config import resolve_config
    from kdtool.train.trainer import train

    f = tiny_features
    exp = tmp_path_factory.mktemp("teacher") / "ctc_teacher"
    cfg = resolve_config({"model": "ctc", "encoder_conf": {"output_size": 32, "attention_heads": 2,
                                                           "linear_units": 64, "num_blocks": 2},
                          "max_epoch": 3, "batch_frames": 800, "keep_nbest_models": 1,
                          "scheduler_conf": {"warmup_steps": 5}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(cfg, exp, f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)
    torch.set_num_threads(threads)
    return exp


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
