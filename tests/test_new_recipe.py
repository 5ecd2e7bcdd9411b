"""egs/TEMPLATE/kd1/new_recipe.sh: a new corpus's recipe from the template, with links to the shared scripts
and a generic conf/, none of another recipe's results; once its local/data.sh is written it runs."""
import os
import subprocess
import textwrap

import yaml

from conftest import SENTENCES, copy_egs
from kdtool.data.datadir import DataDir
from kdtool.kd.distill import load_student_config
from kdtool.train.config import load_config


def new_recipe(egs, *args):
    return subprocess.run([str(egs / "TEMPLATE" / "kd1" / "new_recipe.sh"), *args], cwd=egs.parent,
                          capture_output=True, text=True)


def test_new_recipe_makes_links_a_skeleton_and_a_generic_conf(tmp_path):
    egs = copy_egs(tmp_path)
    p = new_recipe(egs, "my_corpus")
    assert p.returncode == 0, p.stderr
    recipe = egs / "my_corpus" / "kd1"
    for f in ("kd.sh", "path.sh", "cmd.sh", "utils"):  # linked as the other recipes link them
        assert os.readlink(recipe / f) == os.readlink(egs / "librispeech" / "kd1" / f)
        assert (recipe / f).resolve() == (egs / "TEMPLATE" / "kd1" / f).resolve()
    files = sorted(str(f.relative_to(recipe)) for f in recipe.rglob("*") if f.is_file() and "utils" not in f.parts)
    assert files == ["cmd.sh", "conf/decode_ar_beam10.yaml", "conf/decode_ctc_greedy.yaml", "conf/pipeline.conf",
                     "conf/train_ar_teacher.yaml", "conf/train_ctc_student.yaml", "conf/train_ctc_student_kd.yaml",
                     "db.sh", "kd.sh", "local/data.sh", "path.sh", "run.sh"]  # no results, notes, plots, fast configs
    assert not list(egs.glob("my_corpus/kd1.tmp.*"))
    # every training config the pipeline names loads; the KD student is its twin plus kd_conf
    conf = dict(line.split("=", 1) for line in (recipe / "conf/pipeline.conf").read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    for c in conf["teacher_configs"].split("#")[0].strip().strip('"').split():
        assert load_config(recipe / c)["model"] == "ar"
    students = [load_student_config(recipe / c) for c in conf["student_configs"].strip().strip('"').split()]
    assert [s["kd_conf"]["alpha"] > 0 for s in students] == [False, True]
    assert {k for k in students[0] if students[0][k] != students[1][k]} == {"kd_conf"}
    assert yaml.safe_load((recipe / "conf/train_ctc_student_kd.yaml").read_text())["base"] == "train_ctc_student.yaml"
    # a second recipe of the same name, or a bad name, is refused
    again = new_recipe(egs, "my_corpus")
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = new_recipe(egs, "../escape")
    assert bad.returncode != 0 and "is not a corpus name" in bad.stderr and not (egs.parent / "escape").exists()


def test_a_recipe_from_the_template_runs_to_stage_2_on_a_tiny_corpus(tmp_path, tiny_wavs):
    egs = copy_egs(tmp_path)
    assert new_recipe(egs, "my_corpus").returncode == 0
    recipe = egs / "my_corpus" / "kd1"
    opts = ["--train_set", "train", "--valid_set", "dev", "--test_sets", "dev", "--nj", "2", "--token_type", "char"]
    # the skeleton's local/data.sh says it is not written yet
    p = subprocess.run(["./run.sh", *opts, "--stop_stage", "1"], cwd=recipe, capture_output=True, text=True)
    assert p.returncode != 0 and "local/data.sh: not written yet" in p.stderr
    wav_lines = "\n".join(f"{u} {p}" for u, p in sorted(tiny_wavs.items()))
    text_lines = "\n".join(f"{u} {t}" for u, t in sorted(SENTENCES.items()))
    data_sh = recipe / "local" / "data.sh"
    skeleton = data_sh.read_text()
    data_sh.write_text(skeleton.replace(skeleton[skeleton.index('echo "$0: not written yet'):], textwrap.dedent("""\
        # my_corpus: speakers spka (train) and spkb (dev)
        for s in train dev; do mkdir -p data/$s; done
        cat > data/all.scp <<'X'
        {wav}
        X
        cat > data/all.text <<'X'
        {text}
        X
        grep ^spka data/all.scp > data/train/wav.scp; grep ^spka data/all.text > data/train/text
        grep ^spkb data/all.scp > data/dev/wav.scp; grep ^spkb data/all.text > data/dev/text
        for s in train dev; do awk '{{split($1, a, "-"); print $1, a[1]}}' data/$s/wav.scp > data/$s/utt2spk
          python -m kdtool.bin.fix_data_dir data/$s; done
        """).format(wav=wav_lines, text=text_lines)))
    p = subprocess.run(["./run.sh", *opts, "--stop_stage", "2"], cwd=recipe, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert DataDir(recipe / "dump/fbank/train").utts == ["spka-u1", "spka-u2", "spka-u3"]
    assert (recipe / "dump/fbank/dev/feats.scp").read_text().count("\n") == 3
    assert "<space>" in (recipe / "data/token_list/char/tokens.txt").read_text().split()
