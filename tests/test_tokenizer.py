import pytest
import torch

from lib.worlds.ioi import make_tokenizer
from lib.worlds.tokenizer import SPECIALS, WordTokenizer


def test_specials_first_and_order_stable():
    tok = WordTokenizer(["b", "a", "b", "c"])
    assert tok.vocab[: len(SPECIALS)] == list(SPECIALS)
    assert tok.vocab[4:] == ["b", "a", "c"]  # duplicates dropped, order kept
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert WordTokenizer(["b", "a", "c"]).vocab == tok.vocab


def test_roundtrip_and_ids():
    tok = WordTokenizer("Mary John gave a drink to .".split())
    ids = tok.encode("Mary gave a drink to John .")
    assert ids[0] == tok.bos_id
    assert ids[1:] == [4, 6, 7, 8, 9, 5, 10]
    assert tok.decode(ids) == "Mary gave a drink to John ."
    assert tok.decode(ids, skip_special=False).startswith("<bos> Mary")


def test_unknown_word_strict_and_lenient():
    tok = WordTokenizer(["a"])
    with pytest.raises(KeyError, match="'zebra'"):
        tok.encode("a zebra")
    assert tok.encode("a zebra", strict=False)[-1] == tok.unk_id


def test_batch_encode_pads_right():
    tok = WordTokenizer(["a", "b"])
    t = tok.batch_encode(["a", "a b b"])
    assert t.tolist() == [[1, 4, 0, 0], [1, 4, 5, 5]]
    with pytest.raises(ValueError):
        tok.batch_encode(["a b b"], length=2)


def test_rejects_whitespace_words():
    with pytest.raises(ValueError):
        WordTokenizer(["two words"])


def test_ioi_world_names_single_tokens():
    from lib.worlds.ioi import NAMES
    tok = make_tokenizer()
    for n in NAMES:
        assert len(tok.encode(n, bos=False)) == 1
    assert len(set(tok.vocab)) == len(tok.vocab)
