"""Layer 2, the organisms: how the book's model organisms are made, trained and cached.

- ``recipes``: ``Recipe`` (how an organism is made) and ``get_organism`` (from the cache, or trained with its
  parents), ``ckpt_steps``.
- ``ioi_zoo``: the IOI organisms (base, clean, toxic, retrained, control, scratch, backdoor recipes) and
  ``IOIZoo``, the lineage chapters 1-3 draw models from (organisms or GPT-2); ``pcfg_zoo``: chapter 4's.
- ``train``: the training loop; ``models``: the model factory (TransformerLens bridges, GPT-2 loading,
  generation); ``cache``: the content-addressed artifact cache; ``device``: device selection; ``seeding``:
  seeds, one-thread training, provenance.

Imports: ``lib.worlds`` only.
"""
