"""Layer 3, the methods: what the chapters do to organisms to see what fine-tuning changed.

- ``patching``: activation and path patching, cross-model activation patching (CMAP).
- ``circuits``: IOI circuit discovery (head classes), faithfulness, head maps, weight change, concentration.
- ``pruning``: Jain et al.'s pruning of units by the pretraining loss, with random-unit controls.
- ``probing``: linear probes on the residual stream, per block.
- ``reverse_finetuning``: steps to recover a capability, from a training history.
- ``sae``: top-k sparse autoencoders and feature movement (top-k intersections).
- ``perplexity_diff``: perplexity differencing of a fine-tune against its reference, judges, count@top-N.
- ``audit``: every method against every organism (chapters 5-7), calibrated on controls.
- ``stats``: intervals, bootstrap, sign and permutation tests.

Imports: ``lib.worlds`` and ``lib.organisms`` (and each other), never ``lib.book``.
"""
