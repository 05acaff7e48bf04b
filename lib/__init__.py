"""finetune-mechanisms: the thin shared library behind the book's chapters.

Modules: ``tokenizer`` (word-level), ``models`` (organism factory, pretrained loading), ``train`` (training
loop), ``cache`` (content-addressed artifacts), ``organisms`` (recipes, worlds, ``get_organism``), ``runner``
(papermill execution with parameter validation), ``plotting`` (house style), ``seeding`` (seeds, provenance),
worlds ``ioi`` and ``pcfg``, and the analyses used by the chapters.
"""
__version__ = "0.1.0"

import warnings as _warnings

# transformer_lens imports tqdm.auto, which warns on stderr inside a Jupyter kernel without ipywidgets; the rendered
# book must show no stderr blocks (tests/test_browser.py), and the progress bars fall back to text anyway.
_warnings.filterwarnings("ignore", message="IProgress not found")
