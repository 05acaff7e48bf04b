"""lib.book.attention_widget: the HTML is self-contained and carries the tokens and the patterns it was given."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from lib.book.attention_widget import AttentionPatterns, attention_pattern_html

TOKENS = ["<bos>", "When", "Mary", "and", "John", "went", ",", "John", "gave", "to"]


def causal(n_heads: int, n: int, seed: int = 0) -> np.ndarray:
    """Random causal attention patterns ``[head, n, n]`` (rows sum to 1 over keys 0..q)."""
    x = np.random.default_rng(seed).random((n_heads, n, n)) * np.tril(np.ones((n, n)))
    return x / x.sum(-1, keepdims=True)


def payload(html: str) -> dict:
    m = re.search(r'<script type="application/json" class="ftm-attn-data">(.*?)</script>', html, re.S)
    assert m, "no data block"
    assert "<" not in m.group(1)
    return json.loads(m.group(1))


def test_html_carries_tokens_names_and_patterns():
    p = causal(2, len(TOKENS))
    w = attention_pattern_html(TOKENS, torch.tensor(p), ["3.1 name mover", "0.2 S-inhibition"])
    assert isinstance(w, AttentionPatterns) and w._repr_html_() == w.html
    spans = re.findall(r'<span class="ftm-attn-tok"[^>]*>(.*?)</span>', w.html)
    assert spans == ["&lt;bos&gt;"] + TOKENS[1:]  # one span per token, in order, HTML-escaped
    assert w.html.count('class="ftm-attn-head"') == 2 and "3.1 name mover" in w.html
    data = payload(w.html)
    assert data["tokens"] == TOKENS and data["names"] == ["3.1 name mover", "0.2 S-inhibition"]
    np.testing.assert_allclose(np.array(data["patterns"]), p, atol=5e-4)  # rounded to 3 decimals
    assert "3.1 name mover" in repr(w) and "Mary" in repr(w)


def test_html_is_self_contained():
    w = attention_pattern_html(TOKENS, causal(1, len(TOKENS)))
    low = w.html.lower()
    assert "http" not in low and "//" not in re.sub(r"<script>.*?</script>", "", low, flags=re.S)
    assert not re.search(r"<script[^>]*\bsrc=", low) and "<link" not in low and "@import" not in low
    assert "url(" not in low and "import " not in low
    ids = re.findall(r'<div class="ftm-attn" id="([^"]+)"', w.html)
    assert len(ids) == 1 and f'"{ids[0]}"' in w.html  # the script finds its own widget


def test_a_token_cannot_break_out_of_the_page():
    tokens = ["<bos>", "</script><script>alert(1)</script>", "&"]
    w = attention_pattern_html(tokens, causal(1, 3))
    assert "<script>alert" not in w.html and "&amp;" in w.html
    assert payload(w.html)["tokens"] == tokens


def test_two_widgets_get_different_ids():
    a = attention_pattern_html(TOKENS, causal(1, len(TOKENS)))
    b = attention_pattern_html(TOKENS, causal(1, len(TOKENS)))
    ida, idb = (re.search(r'id="(ftm-attn-[^"]+)"', x.html).group(1) for x in (a, b))
    assert ida != idb


@pytest.mark.parametrize("kwargs, match", [
    (dict(tokens=[], pattern=np.zeros((1, 0, 0))), "tokens"),
    (dict(tokens=TOKENS, pattern=np.zeros((0, 10, 10))), "pattern"),
    (dict(tokens=TOKENS, pattern=causal(1, 9)), r"pattern\[0\] has shape \(9, 9\), expected \(10, 10\)"),
    (dict(tokens=TOKENS, pattern=causal(1, 10) * 2), "outside"),
    (dict(tokens=TOKENS, pattern=np.full((1, 10, 10), np.nan)), "outside"),
    (dict(tokens=TOKENS, pattern=causal(2, 10), head_names=["a"]), "head_names"),
])
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_pattern_html(**kwargs)
