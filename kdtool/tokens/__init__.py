"""Output units: a sentencepiece model or characters, and the token list every model shares."""
from kdtool.tokens.tokenizer import BLANK, MASK, SOS_EOS, UNK, Tokenizer, build_token_list  # noqa: F401
