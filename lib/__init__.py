"""finetune-mechanisms: the thin shared library behind the book's chapters, in four layers.

Each layer imports only the layers above it in this list (``tests/test_layers.py`` walks every import and fails
on one that points the other way):

1. ``lib.worlds``: the synthetic worlds the organisms live in: vocabulary, prompts, corpora, fine-tuning data
   (clean, poisoned, controls, backdoor), evaluations (IOI; the PCFG counting world), and the tokenizer.
2. ``lib.organisms``: how organisms are made: recipes and ``get_organism``, the content-addressed cache, the
   training loop, the model factory (TransformerLens bridges; GPT-2 loading), devices, seeding, and the zoos of
   each world's organisms (``ioi_zoo``, ``pcfg_zoo``).
3. ``lib.methods``: what the chapters do to organisms: activation/path patching and CMAP (``patching``),
   circuit discovery and comparison (``circuits``), pruning, probing, reverse fine-tuning, sparse autoencoders
   (``sae``), perplexity differencing (``perplexity_diff``), the audit of chapters 5-7 (``audit``) and statistics
   (``stats``).
4. ``lib.book``: the machinery of the book: running chapters (``runner``), findings and seed records
   (``findings``), seed sweeps (``sweep``), teach mode (``teach``, ``checks``), figures (``plotting``), the
   helpers chapters call (``chapter``) and the command line (``cli``; ``python -m lib``).
"""
__version__ = "0.1.0"

import warnings as _warnings

# transformer_lens imports tqdm.auto, which warns on stderr inside a Jupyter kernel without ipywidgets; the rendered
# book must show no stderr blocks (tests/test_browser.py), and the progress bars fall back to text anyway.
_warnings.filterwarnings("ignore", message="IProgress not found")
