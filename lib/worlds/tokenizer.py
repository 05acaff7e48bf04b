"""A word-level tokenizer for the book's synthetic worlds.

Every world (the IOI world, the PCFG world) has a closed vocabulary, so a word-level tokenizer is exact: one
word, one token, no merges. Names are single tokens, which keeps IOI positions aligned between clean and
corrupted prompts (the property activation patching needs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


@dataclass
class WordTokenizer:
    """Maps whitespace-separated words to ids and back.

    The special tokens ``<pad> <bos> <eos> <unk>`` take ids 0–3; the vocabulary follows in the given order
    (duplicates dropped, order kept), so the same word list always gives the same ids.
    """

    words: Sequence[str]
    vocab: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for w in list(SPECIALS) + list(self.words):
            if not w or any(c.isspace() for c in w):
                raise ValueError(f"vocabulary word {w!r} is empty or contains whitespace")
            seen.setdefault(w, len(seen))
        self.vocab = list(seen)
        self.index = seen

    pad_id = property(lambda self: 0)
    bos_id = property(lambda self: 1)
    eos_id = property(lambda self: 2)
    unk_id = property(lambda self: 3)

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def token_id(self, word: str) -> int:
        """Id of a single word; raises ``KeyError`` naming the word if it is not in the vocabulary."""
        try:
            return self.index[word]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words)") from None

    def encode(self, text: str, bos: bool = True, strict: bool = True) -> list[int]:
        """Ids of ``text.split()``, with ``<bos>`` first if ``bos``. Unknown words raise if ``strict``, else map to ``<unk>``."""
        ids = [self.bos_id] if bos else []
        for w in text.split():
            ids.append(self.token_id(w) if strict else self.index.get(w, self.unk_id))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Words of ``ids`` joined by spaces; special tokens are dropped if ``skip_special``."""
        out = []
        for i in ids:
            i = int(i)
            if skip_special and i < len(SPECIALS):
                continue
            out.append(self.vocab[i])
        return " ".join(out)

    def batch_encode(self, texts: Sequence[str], bos: bool = True, length: int | None = None) -> torch.Tensor:
        """Right-padded id tensor ``[batch, length]`` (``length`` defaults to the longest text)."""
        rows = [self.encode(t, bos=bos) for t in texts]
        n = max(len(r) for r in rows) if length is None else length
        if any(len(r) > n for r in rows):
            raise ValueError(f"a text has more than length={n} tokens")
        out = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out


class HFWordTokenizer:
    """The ``WordTokenizer`` interface over a Hugging Face tokenizer (e.g. GPT-2's BPE), for pretrained models.

    Each word is encoded on its own with a leading space (``" Mary"``), so a text is the concatenation of its
    words' tokens and word positions stay computable. ``token_id`` insists the word is a single token, which is
    what IOI names must be in GPT-2 (Wang et al. 2022 chose their names that way).
    """

    def __init__(self, hf_tokenizer, words: Sequence[str] = ()) -> None:
        self.hf = hf_tokenizer
        self.words = list(words)
        bos = hf_tokenizer.bos_token_id
        self._bos = 0 if bos is None else int(bos)
        self._eos = int(hf_tokenizer.eos_token_id) if hf_tokenizer.eos_token_id is not None else self._bos
        self._pad = int(hf_tokenizer.pad_token_id) if hf_tokenizer.pad_token_id is not None else self._eos

    pad_id = property(lambda self: self._pad)
    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    unk_id = property(lambda self: self._eos)

    def __len__(self) -> int:
        return len(self.hf)

    def __contains__(self, word: str) -> bool:
        return len(self.hf.encode(" " + word)) == 1

    def token_id(self, word: str) -> int:
        ids = self.hf.encode(" " + word)
        if len(ids) != 1:
            raise KeyError(f"word {word!r} is {len(ids)} tokens for this tokenizer, not one")
        return int(ids[0])

    def encode(self, text: str, bos: bool = True, strict: bool = True) -> list[int]:
        ids = [self.bos_id] if bos else []
        for w in text.split():
            ids.extend(int(i) for i in self.hf.encode(" " + w))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special).strip()

    batch_encode = WordTokenizer.batch_encode
