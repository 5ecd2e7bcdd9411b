"""egs/TEMPLATE/kd1/utils/parse_options.sh, sourced by a small script that declares its options
the way recipe scripts do (under set -euo pipefail) and prints them."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARSE_OPTIONS = REPO / "egs/TEMPLATE/kd1/utils/parse_options.sh"

SCRIPT = f"""\
set -euo pipefail
stage=1
fast=false
foo_bar=x
help_message="Usage: t.sh [options] <data-dir>"
. {PARSE_OPTIONS}
echo "stage=[$stage] fast=[$fast] foo_bar=[$foo_bar] nargs=$#"
for a in "$@"; do echo "arg=[$a]"; done
"""


@pytest.fixture
def parse(tmp_path):
    script = tmp_path / "t.sh"
    script.write_text(SCRIPT)

    def run(*args):
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30)
    return run


def test_defaults(parse):
    r = parse()
    assert r.returncode == 0, r.stderr
    assert r.stdout == "stage=[1] fast=[false] foo_bar=[x] nargs=0\n"


@pytest.mark.parametrize("args", [["--foo-bar", "v"], ["--foo-bar=v"], ["--foo_bar", "v"]])
def test_dashes_become_underscores(parse, args):
    r = parse(*args)
    assert r.returncode == 0, r.stderr
    assert "foo_bar=[v]" in r.stdout


@pytest.mark.parametrize("args", [["--foo-bar", "a  b c"], ["--foo-bar=a  b c"]])
def test_value_with_spaces(parse, args):
    r = parse(*args, "--stage", "3")
    assert r.returncode == 0, r.stderr
    assert "stage=[3] fast=[false] foo_bar=[a  b c] nargs=0" in r.stdout


def test_value_with_equals_sign_and_empty_value(parse):
    r = parse("--foo-bar=k=v", "--stage=")
    assert r.returncode == 0, r.stderr
    assert "stage=[] fast=[false] foo_bar=[k=v]" in r.stdout


@pytest.mark.parametrize("args, fast, rest", [
    (["--fast"], "true", []),
    (["--fast", "false"], "false", []),
    (["--fast", "true"], "true", []),
    (["--fast=false"], "false", []),
    # alone, a boolean option takes the next argument only if it is true/false
    (["--fast", "data/train"], "true", ["data/train"]),
    (["--fast", "maybe"], "true", ["maybe"]),
])
def test_boolean_option(parse, args, fast, rest):
    r = parse(*args)
    assert r.returncode == 0, r.stderr
    assert f"fast=[{fast}]" in r.stdout and f"nargs={len(rest)}" in r.stdout
    assert [f"arg=[{a}]" for a in rest] == r.stdout.splitlines()[1:]


@pytest.mark.parametrize("arg", ["--fast=maybe", "--fast="])
def test_boolean_option_rejects_other_values(parse, arg):
    r = parse(arg)
    assert r.returncode != 0
    assert "option --fast takes true or false" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("arg", ["--nj", "--nj=4", "--Stage", "--help-me"])
def test_unknown_option(parse, arg):
    r = parse(arg, "4")
    assert r.returncode != 0
    assert f"unknown option {arg.split('=')[0]}" in r.stderr
    assert r.stdout == ""


def test_option_without_value(parse):
    r = parse("--stage")
    assert r.returncode != 0
    assert "option --stage needs a value" in r.stderr
    assert r.stdout == ""


def test_positional_arguments_remain(parse):
    r = parse("--stage", "2", "data/train", "with space", "--fast")  # parsing stops at data/train
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stage=[2] fast=[false] foo_bar=[x] nargs=3",
                                     "arg=[data/train]", "arg=[with space]", "arg=[--fast]"]


def test_double_dash_ends_options(parse):
    r = parse("--stage", "2", "--", "--fast")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stage=[2] fast=[false] foo_bar=[x] nargs=1", "arg=[--fast]"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_options(parse, flag):
    r = parse("--stage", "5", flag)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Usage: t.sh [options] <data-dir>"
    options = dict((line.split(None, 1) + [""])[:2] for line in lines[2:])
    assert options["--stage"] == "5"  # the value given before --help
    assert options["--fast"] == "false" and options["--foo-bar"] == "x"
    assert "--help-message" not in options
    assert "stage=" not in r.stdout  # --help exits before the script goes on


def test_help_shows_options_named_like_its_own_variables(tmp_path):
    # regression: --help used locals "line" and "name", which hid options of those names
    script = tmp_path / "t.sh"
    script.write_text(f"set -euo pipefail\nname=mymodel\nline=5\n. {PARSE_OPTIONS}\n")
    r = subprocess.run(["bash", str(script), "--line", "7", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "  --line                     7\n" in r.stdout
    assert "  --name                     mymodel\n" in r.stdout


def test_config_file_sets_options_and_later_options_override(parse, tmp_path):
    conf = tmp_path / "pipeline.conf"
    conf.write_text('stage=4\nfoo_bar="from conf"\n')
    r = parse("--config", str(conf), "--stage", "5")
    assert r.returncode == 0, r.stderr
    assert "stage=[5] fast=[false] foo_bar=[from conf]" in r.stdout
    r = parse(f"--config={conf}")
    assert "stage=[4]" in r.stdout


def test_missing_config_file_fails(parse, tmp_path):
    r = parse("--config", str(tmp_path / "nope.conf"))
    assert r.returncode != 0
    assert "--config: no such file" in r.stderr and "nope.conf" in r.stderr
