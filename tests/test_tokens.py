"""The token list every teacher and student shares: reserved ids, round trips, bad input."""
import pytest

from kdtool.tokens import BLANK, MASK, SOS_EOS, UNK, Tokenizer, build_token_list

TEXT = ["u{:03d} {}".format(i, s) for i, s in enumerate([
    "THE CAT SAT ON THE MAT", "A DOG IN THE FOG", "THE MAT WAS FLAT", "DON'T LET THE CAT OUT",
    "WHERE IS THE DOG", "CATS AND DOGS AND MATS", "THE FOG LIFTED AT NOON", "NOON IS NOT NIGHT"] * 5)]


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "text"
    p.write_text("\n".join(TEXT) + "\n")
    return p


@pytest.mark.parametrize("token_type", ["bpe", "char"])
def test_reserved_ids_and_round_trip(text_file, tmp_path, token_type):
    tokens = build_token_list(text_file, tmp_path / token_type, token_type, vocab_size=30)
    assert tokens[:2] == [BLANK, UNK] and tokens[-2:] == [SOS_EOS, MASK]
    assert len(set(tokens)) == len(tokens)
    tok = Tokenizer(tmp_path / token_type)
    assert (tok.blank, tok.unk, tok.sos_eos, tok.mask) == (0, 1, len(tok) - 2, len(tok) - 1)
    for line in TEXT[:8]:
        ids = tok.text2ids(line.split(maxsplit=1)[1])
        assert tok.unk not in ids and min(ids) >= 2 and max(ids) < tok.sos_eos
        assert tok.ids2text(ids) == line.split(maxsplit=1)[1]
    # Unknown symbols map to <unk>; special ids vanish when decoding.
    assert tok.unk in tok.text2ids("THE ZEBRA")
    assert tok.ids2text([tok.blank] + tok.text2ids("THE CAT") + [tok.sos_eos, tok.mask]) == "THE CAT"


def test_vocab_size_is_a_soft_limit(text_file, tmp_path):
    tokens = build_token_list(text_file, tmp_path / "big", "bpe", vocab_size=5000)
    assert 4 < len(tokens) < 5000


def test_char_units_mark_word_boundaries(text_file, tmp_path):
    build_token_list(text_file, tmp_path / "c", "char")
    tok = Tokenizer(tmp_path / "c")
    assert tok.text2tokens("A  DOG") == ["A", "<space>", "D", "O", "G"]


def test_bad_inputs(tmp_path, text_file):
    empty = tmp_path / "empty"
    empty.write_text("u1\nu2\n")
    with pytest.raises(ValueError, match="empty: no transcripts"):
        build_token_list(empty, tmp_path / "x", "char")
    with pytest.raises(ValueError, match="unknown token_type 'word'"):
        build_token_list(text_file, tmp_path / "z", "word")
    build_token_list(text_file, tmp_path / "ok", "char")
    (tmp_path / "ok" / "tokens.txt").write_text("<blank>\n<unk>\nA\n")
    with pytest.raises(ValueError, match=r"tokens.txt: reserved symbol <sos/eos> missing"):
        Tokenizer(tmp_path / "ok")
