"""finetune-mechanisms: the thin shared library behind the book's chapters.

Modules: ``tokenizer`` (word-level), ``models`` (organism factory, pretrained loading), ``train`` (training
loop), ``cache`` (content-addressed artifacts), ``organisms`` (recipes, worlds, ``get_organism``), ``runner``
(papermill execution with parameter validation), ``plotting`` (house style), ``seeding`` (seeds, provenance),
worlds ``ioi`` and ``pcfg``, and the analyses used by the chapters.
"""
__version__ = "0.1.0"
