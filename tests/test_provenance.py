"""Dumps record the sha256 of their teacher's weights and of the data they were made from
(kdtool/utils/provenance.py): stage 4 (kd.sh, the entry points' --check) redoes a stale dump, stage 5
refuses one before training; dumps made before this are read with a warning."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import copy_egs
from kdtool.data.datadir import read_table, write_table
from kdtool.kd.distill import distill, load_student_config
from kdtool.kd.dump import dump_job, merge_dump
from kdtool.kd.softlabels import TYPES, SoftLabelReader
from kdtool.models.load import write_checksums
from kdtool.utils import provenance
from kdtool.utils.files import file_sha256
from kdtool.utils.provenance import StaleDumpError, check_dumps

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def teacher(tiny_teacher, tmp_path):
    """A copy of the tiny teacher that a test may retrain."""
    t = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, t, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "csv"))
    return t


@pytest.fixture
def data(tiny_features, tmp_path):
    """A copy of the tiny feature dir (feats.scp, text, ...) that a test may edit."""
    d = tmp_path / "data"
    shutil.copytree(tiny_features["feats"], d)
    return d


def retrain(teacher):
    """What retraining in place leaves: other weights in model.pth (and their sha256.json), the same token list."""
    w = torch.load(teacher / "model.pth", weights_only=True)
    name = next(k for k, v in w.items() if v.is_floating_point())
    w[name] = w[name] + 0.01
    torch.save(w, teacher / "model.pth")
    write_checksums(teacher)


def edit_transcript(data):
    """One transcript edited, its length kept (so no row count can tell)."""
    text = read_table(data / "text")
    assert text["spka-u1"] == "THE QUICK BROWN FOX"
    text["spka-u1"] = "THE QUICK BROWN BOX"
    write_table(data / "text", text)


def make_dump(teacher, data, out, type="frame_posteriors"):
    dump_job(teacher, data, out, type, topk=4)
    merge_dump(out, 1)
    return out


def student(tmp_path):
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump({"model": "ctc", "encoder_conf": {"output_size": 16, "attention_heads": 2,
                                                                     "linear_units": 32, "num_blocks": 1},
                                    "max_epoch": 1, "batch_frames": 800, "kd_conf": {"alpha": 0.5}}))
    return path


def distill_from(tmp_path, tiny_features, teacher, data, dumps):
    return distill(load_student_config(student(tmp_path)), tmp_path / "exp", data, data, teacher / "tokens",
                   tiny_features["cmvn"], soft_label_dirs=dumps, teacher_dir=teacher, accelerator="cpu", devices=1)


def test_dumps_record_where_they_came_from(teacher, data, tmp_path):
    fb = make_dump(teacher, data, tmp_path / "fb", "fb_posteriors")
    frames = make_dump(teacher, data, tmp_path / "frames")
    for d, text in ((fb, file_sha256(data / "text")), (frames, None)):  # frame posteriors read no transcript
        meta, info = (json.loads((d / f).read_text()) for f in ("soft_labels.json", "dump_info.json"))
        want = {"teacher_sha256": file_sha256(teacher / "model.pth"), "data": str(data.resolve()),
                "feats_scp_sha256": file_sha256(data / "feats.scp"), "text_sha256": text}
        assert {k: meta[k] for k in want} == want and {k: info[k] for k in want} == want
        assert meta["format_version"] == info["format_version"] == 2


def test_a_dump_of_a_retrained_or_another_teacher_is_refused_before_training(teacher, data, tiny_features, tmp_path):
    dump = make_dump(teacher, data, tmp_path / "soft" / "frame_posteriors_data")
    made_by = file_sha256(teacher / "model.pth")
    # another teacher with the same token list
    other = tmp_path / "other_teacher"
    shutil.copytree(teacher, other)
    retrain(other)
    with pytest.raises(StaleDumpError) as e:
        distill_from(tmp_path, tiny_features, other, data, [dump])
    assert str(e.value) == (f"{dump}: stale: made from other teacher weights than {other / 'model.pth'} "
                            f"(teacher_sha256 {made_by[:16]} in the dump, {file_sha256(other / 'model.pth')[:16]} "
                            f"now); rerun stage 4 (it redoes stale dumps) or delete {dump}")
    assert not (tmp_path / "exp" / "checkpoints").exists()

    # the teacher retrained in place: refused by the entry point, one line, before training
    retrain(teacher)
    cfg = student(tmp_path)
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.distill", "--config", cfg, "--train_data", data,
                        "--valid_data", data, "--token_list", teacher / "tokens", "--cmvn", tiny_features["cmvn"],
                        "--exp_dir", tmp_path / "exp", "--teacher_dir", teacher, "--soft_labels", dump,
                        "--accelerator", "cpu", "--devices", "1"], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert (f"{dump}: stale: made from other teacher weights than {teacher / 'model.pth'} (teacher_sha256 "
            f"{made_by[:16]} in the dump, {file_sha256(teacher / 'model.pth')[:16]} now); rerun stage 4") in p.stderr
    assert not (tmp_path / "exp" / "checkpoints").exists()
    # without --teacher_dir: checked against the teacher the dump names
    reader = SoftLabelReader(dump)
    with pytest.raises(StaleDumpError, match=r"made from other teacher weights than .*teacher/model.pth"):
        check_dumps([reader], None, [data])


def test_a_dump_of_changed_transcripts_or_features_is_refused(teacher, data, tiny_features, tmp_path):
    fb = make_dump(teacher, data, tmp_path / "fb", "fb_posteriors")
    frames = make_dump(teacher, data, tmp_path / "frames")
    text_was = file_sha256(data / "text")
    edit_transcript(data)
    with pytest.raises(StaleDumpError) as e:
        distill_from(tmp_path, tiny_features, teacher, data, [fb])
    text_is = file_sha256(data / "text")
    assert str(e.value).startswith(f"{fb}: stale: made from other transcripts than {data / 'text'} (text_sha256 "
                                   f"{text_was[:16]} in the dump, {text_is[:16]} now); rerun stage 4")
    check_dumps([SoftLabelReader(frames)], teacher, [data])  # frame posteriors did not read the transcripts
    # features recomputed elsewhere: feats.scp names other arks
    scp = read_table(data / "feats.scp")
    write_table(data / "feats.scp", {u: move_ark(where, tmp_path / "moved") for u, where in scp.items()})
    with pytest.raises(StaleDumpError, match=rf"{frames}: stale: made from other features than .*feats.scp"):
        check_dumps([SoftLabelReader(frames)], teacher, [data])
    # a student on a subset of the data (another dir) is checked against the dir the dump was made from
    fresh = make_dump(teacher, data, tmp_path / "fresh")
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("feats.scp", "utt2num_frames", "text"):
        write_table(subset / name, dict(list(read_table(data / name).items())[:3]))
    check_dumps([SoftLabelReader(fresh)], teacher, [subset])
    write_table(data / "feats.scp", scp)
    with pytest.raises(StaleDumpError, match=rf"{fresh}: stale: made from other features than {data}/feats.scp"):
        check_dumps([SoftLabelReader(fresh)], teacher, [subset])


def move_ark(where, to):
    """A copy of an scp entry's ark under ``to``: the entry naming the copy."""
    ark, offset = where.rsplit(":", 1)
    to.mkdir(exist_ok=True)
    if not (to / os.path.basename(ark)).exists():
        shutil.copy(ark, to)
    return f"{to / os.path.basename(ark)}:{offset}"


def test_a_dump_without_provenance_is_read_with_a_warning(teacher, data, tmp_path, caplog):
    dump = make_dump(teacher, data, tmp_path / "old")
    meta = json.loads((dump / "soft_labels.json").read_text())
    (dump / "soft_labels.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in provenance.KEYS}))
    retrain(teacher)
    with caplog.at_level(logging.WARNING):
        check_dumps([SoftLabelReader(dump)], teacher, [data])
    assert f"{dump}: made before dumps recorded their teacher's and data's sha256: its provenance is unchecked" \
        in caplog.text


def check(module, *args):
    p = subprocess.run([sys.executable, "-m", f"kdtool.bin.{module}", *map(str, args), "--check"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    return p.returncode, p.stdout.strip()


def test_check_says_whether_a_dump_is_up_to_date(teacher, data, tmp_path):
    assert TYPES == __import__("kdtool.bin.dump_soft_labels", fromlist=["TYPES"]).TYPES
    out = make_dump(teacher, data, tmp_path / "fb", "fb_posteriors")
    args = ["--teacher", teacher, "--data", data, "--out_dir", out, "--type", "fb_posteriors", "--topk", 4]
    assert check("dump_soft_labels", *args) == (0, f"{out}: up to date")
    assert check("dump_soft_labels", *args[:-1], 8) == (1, f"{out}: made with topk 4, now 8")
    assert check("dump_soft_labels", *args[:-3], "frame_posteriors", "--topk", 4)[1] == \
        f"{out}: made with type 'fb_posteriors', now 'frame_posteriors'"
    edit_transcript(data)
    code, why = check("dump_soft_labels", *args)
    assert code == 1 and why.startswith(f"{out}: made from other transcripts than {data / 'text'}"), why
    (out / "dump_info.json").unlink()
    assert check("dump_soft_labels", *args) == (1, f"{out}: incomplete")
    args[args.index("--out_dir") + 1] = tmp_path / "none"
    assert check("dump_soft_labels", *args) == (1, f"{tmp_path / 'none'}: not made yet")

    # N-best lists (written by hand: the tiny teacher is no AR model)
    nb = tmp_path / "nbest"
    nb.mkdir()
    (nb / "nbest.json").write_text(json.dumps({"format_version": 1, **provenance.nbest_options(2, 10, 0.3),
                                               **provenance.record(teacher, data, uses_text=False)}))
    (nb / "nbest.jsonl").write_text("")
    args = ["--teacher", teacher, "--data", data, "--out_dir", nb, "--nbest", 2]
    assert check("dump_nbest", *args) == (0, f"{nb}: up to date")
    assert check("dump_nbest", *args, "--beam_size", 5) == (1, f"{nb}: made with beam_size 10, now 5")
    retrain(teacher)
    code, why = check("dump_nbest", *args)
    assert code == 1 and why.startswith(f"{nb}: made from other teacher weights than {teacher / 'model.pth'}"), why
    meta = json.loads((nb / "nbest.json").read_text())
    (nb / "nbest.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in provenance.KEYS}))
    assert check("dump_nbest", *args) == (1, f"{nb}: made before dumps recorded their teacher's and data's sha256 "
                                             "(format_version 1)")


def test_kd_sh_redoes_a_dump_whose_teacher_or_transcripts_changed(teacher, data, tmp_path):
    recipe = copy_egs(tmp_path / "kdtool") / "mini_en" / "kd1"
    fbank = recipe / "dump" / "fbank" / "tiny"
    fbank.parent.mkdir(parents=True)
    shutil.move(data, fbank)
    dump = recipe / "soft" / "fb_posteriors_tiny"

    def stage4():
        p = subprocess.run(["./kd.sh", "--stage", "4", "--stop_stage", "4", "--nj", "1", "--train_set", "tiny",
                            "--kd_teacher", str(teacher), "--soft_label_dir", "soft", "--soft_label_types",
                            "fb_posteriors"], cwd=recipe, env=ENV, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr, json.loads((dump / "dump_info.json").read_text())

    out, info = stage4()
    assert "Stage 4: fb_posteriors of" in out and info["utterances"] == 6
    retrain(teacher)
    out, info = stage4()
    assert "Stage 4: redoing soft/fb_posteriors_tiny: made from other teacher weights than" in out, out
    assert info["teacher_sha256"] == file_sha256(teacher / "model.pth")
    edit_transcript(fbank)
    out, info = stage4()
    assert "Stage 4: redoing soft/fb_posteriors_tiny: made from other transcripts than" in out, out
    assert info["text_sha256"] == file_sha256(fbank / "text")  # (an unchanged dump is skipped: test_kd_sh_inference)
