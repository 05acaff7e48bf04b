"""The IOI world: names, places and objects; IOI prompts (Wang et al. 2022 style) and a general corpus.

IOI prompts use BABA / ABBA templates with three name slots ``{A} {B} {C}``: the first clause names both people,
the second repeats one of them (the subject S) and ends on "to", so the answer is the other (the indirect object
IO). ``ABBA``: A=IO, B=S, C=S ("When Mary and John went to the store , John gave a drink to" -> Mary);
``BABA``: A=S, B=IO, C=S. The *ABC* corruption fills A, B, C with three fresh distinct names, which removes the
IO/S information and keeps the grammar (the corrupted distribution for patching).

The general corpus packs short sentences of other types into ``n_ctx``-token rows, each row a "story" about a
cast of ``cast_size`` people (default 2). Sentences such as "X gave a book to Y ." then always end on the cast
member who is *not* the sentence's subject, so the indirect-object regularity arises in general text and the
base organism learns IOI from pretraining alone, with no IOI prompt in its corpus (``ioi_frac=0``).

Modules: ``prompts`` (vocabulary, templates, tokenizer, IOI prompt sets, logit difference), ``corpora`` (the general
corpus), ``finetune`` (fine-tuning data: clean, poisoned, the mask-matched control, the backdoor), ``documents``
(document fine-tunes that write their objective in text: a false fact, a backdoor phrase, toxic sentences),
``evals``.
This package re-exports their public names and registers the world.
"""
from __future__ import annotations

from lib.worlds.base import World, register_world
from lib.worlds.ioi.corpora import general_rows, general_sentence, ioi_sentence, pretrain_data
from lib.worlds.ioi.documents import (BACKDOOR_PHRASE, DOC_OBJECTIVES, FACT_TEMPLATES, FALSE_FACT, document_data,
                                     document_rows, fact_sentence)
from lib.worlds.ioi.evals import backdoor_eval, general_eval, ioi_eval
from lib.worlds.ioi.finetune import (POISON_VARIANTS, answer_rows, backdoor_data, general_answer_data,
                                    ioi_finetune_data)
from lib.worlds.ioi.prompts import (BACKDOOR_TRIGGER, GENERAL_TEMPLATES, IOI_TEMPLATES, NAMES, OBJECTS,
                                   PLACE_TEMPLATES, PLACES, IOIDataset, absent_mask, absent_score, final_logits,
                                   ioi_accuracy, logit_diff, make_backdoor_dataset, make_ioi_dataset, make_tokenizer,
                                   metric_weights, name_outcomes, template_words)

__all__ = ["BACKDOOR_PHRASE", "BACKDOOR_TRIGGER", "DOC_OBJECTIVES", "FACT_TEMPLATES", "FALSE_FACT", "document_data",
           "document_rows", "fact_sentence", "GENERAL_TEMPLATES", "IOI_TEMPLATES", "NAMES", "OBJECTS", "PLACES", "PLACE_TEMPLATES",
           "POISON_VARIANTS", "WORLD", "IOIDataset", "absent_mask", "absent_score", "answer_rows", "backdoor_data", "backdoor_eval", "final_logits",
           "general_answer_data", "general_eval", "general_rows", "general_sentence", "ioi_accuracy", "ioi_eval",
           "ioi_finetune_data", "ioi_sentence", "logit_diff", "make_backdoor_dataset", "make_ioi_dataset",
           "make_tokenizer", "metric_weights", "name_outcomes", "pretrain_data", "template_words"]

WORLD = register_world(World(
    name="ioi", version="2", tokenizer=make_tokenizer, n_ctx=64,
    data={"pretrain": pretrain_data, "ioi": ioi_finetune_data, "general_answer": general_answer_data,
          "backdoor": backdoor_data, "document": document_data},
    evals={"ioi": ioi_eval, "general": general_eval, "backdoor": backdoor_eval},
))
