"""A trained model as a compact, checked package: what a recipe ships (``egs/<corpus>/kd1/teachers/<name>/``),
what stage 3 installs as an exp dir instead of training, and how any recipe takes a teacher trained elsewhere.

    <package>/config.yaml         the resolved training config
    <package>/tokens/             token list (+ sentencepiece model): every student of this teacher uses it
    <package>/cmvn.ark            the feature normalization the model was trained with
    <package>/model.fp16.pth      the averaged weights in float16: half the bytes of model.pth
    <package>/model_info.json     model_info of the training (kind, parameters, epochs, time), plus what
                                  the packer adds (training command, data, WERs) and ``package``: the
                                  sha256 of the weights file, tokens.txt and cmvn.ark

Installing checks every file and sha256 before anything is written, then writes the exp dir
(float32 ``model.pth``) under a temporary name and renames it, so a killed install leaves nothing
half-made; installing the same package again does nothing.
"""
import json
import shutil
from pathlib import Path

import torch

from kdtool.errors import KdtoolError
from kdtool.models.load import load_weights, write_checksums
from kdtool.utils.atomic import atomic_open, atomic_path
from kdtool.utils.files import file_sha256

WEIGHTS = "model.fp16.pth"
FILES = ("config.yaml", "tokens/tokens.txt", "cmvn.ark", WEIGHTS, "model_info.json")
CHECKED = {"weights_sha256": WEIGHTS, "tokens_sha256": "tokens/tokens.txt", "cmvn_sha256": "cmvn.ark"}


class PackageError(KdtoolError):
    """A package that cannot be installed; the message names the file and what is wrong."""


def pack(exp_dir, out_dir, extra_info=None):
    """Write ``out_dir`` from a trained exp dir; ``extra_info`` (the training command, data sizes,
    WERs, ...) joins its model_info.json. Returns that model_info."""
    exp, out = Path(exp_dir), Path(out_dir)
    for name in ("config.yaml", "tokens/tokens.txt", "cmvn.ark", "model.pth", "model_info.json"):
        if not (exp / name).exists():
            raise PackageError(f"{exp}: not a trained model dir: {name} is missing")
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    for src in [exp / "config.yaml", exp / "cmvn.ark", *sorted((exp / "tokens").iterdir())]:
        with atomic_path(out / src.relative_to(exp)) as tmp:
            shutil.copy2(src, tmp)
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_weights(exp / "model.pth").items()}
    with atomic_path(out / WEIGHTS) as tmp:
        torch.save(state, tmp)
    info = json.loads((exp / "model_info.json").read_text())
    info.update(extra_info or {})
    info["package"] = {key: file_sha256(out / name) for key, name in CHECKED.items()}
    with atomic_open(out / "model_info.json") as f:
        json.dump(info, f, indent=2)
    return info


def check_package(pkg_dir):
    """The package's model_info, once every file is there and matches its sha256; a PackageError
    naming the file (and both values) otherwise."""
    pkg = Path(pkg_dir)
    for name in FILES:
        if not (pkg / name).is_file():
            raise PackageError(f"{pkg / name}: missing: {pkg} is not a complete model package "
                               f"(it needs {', '.join(FILES)})")
    try:
        info = json.loads((pkg / "model_info.json").read_text())
        expected = info["package"]
    except (ValueError, KeyError, TypeError):
        raise PackageError(f"{pkg / 'model_info.json'}: not a package's model_info (no 'package' sha256 record); "
                           "make it with python -m kdtool.bin.pack_model") from None
    for key, name in CHECKED.items():
        actual = file_sha256(pkg / name)
        if actual != expected.get(key):
            raise PackageError(f"{pkg / name}: sha256 {actual} does not match {expected.get(key)} recorded in "
                               f"{pkg / 'model_info.json'}: the file is damaged or was changed after packing; "
                               "restore it (git checkout) or pack the model again")
    return info


def install(pkg_dir, exp_dir):
    """Make ``exp_dir`` a trained exp dir (float32 model.pth) from a checked package. Returns its model_info."""
    pkg, exp = Path(pkg_dir), Path(exp_dir)
    info = check_package(pkg)
    if (exp / "model.pth").exists() and (exp / "model_info.json").exists():
        have = json.loads((exp / "model_info.json").read_text()).get("package")
        if have == info["package"]:
            return info  # installed before
        raise PackageError(f"{exp}: already holds another model (its model_info.json records other sha256s than "
                           f"{pkg}); remove it to install {pkg} there")
    if exp.exists() and any(exp.iterdir()):
        raise PackageError(f"{exp}: exists and is not an installed copy of {pkg}; remove it to install there")
    tmp = exp.with_name(exp.name + ".installing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pkg, tmp, ignore=shutil.ignore_patterns(WEIGHTS))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_weights(pkg / WEIGHTS).items()}
    torch.save(state, tmp / "model.pth")
    info = {**info, "installed_from": str(pkg)}
    (tmp / "model_info.json").write_text(json.dumps(info, indent=2))
    write_checksums(tmp)  # from now on the exp dir is checked on load like one trained here
    if exp.exists():
        exp.rmdir()  # empty (checked above)
    tmp.rename(exp)
    return info
