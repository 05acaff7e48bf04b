"""Layer 1, the worlds: synthetic data the book's organisms are trained and tested on.

- ``base``: what a world provides (``World``: tokenizer, data sources, evaluations), the registry
  (``get_world``, ``world_tokenizer``) and ``masked_lm_loss``, the loss every batch is trained under.
- ``tokenizer``: the word-level tokenizer (and its Hugging Face adapter for GPT-2).
- ``ioi``: the IOI world (chapters 0-3, 5-7): ``ioi.prompts`` (names, templates, IOI prompt sets, logit
  difference), ``ioi.corpora`` (the general corpus), ``ioi.finetune`` (clean and poisoned fine-tuning data,
  the mask-matched control, the backdoor), ``ioi.evals``. ``from lib.worlds import ioi`` gives all of them.
- ``pcfg``: the PCFG counting world of Jain et al. (chapter 4): grammar, tasks, data and evaluations.

Imports: nothing else of ``lib`` (torch and numpy only).
"""
