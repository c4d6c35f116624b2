"""Model-level reduction of a sparse mixture-of-experts model: fewer experts per layer by merging
groups of experts (docs/moe.md).

Not per-tensor merge operators: each method reads the router's statistics on calibration text
and the experts' outputs, groups a layer's experts, and merges each group into one expert.

- ``mc-smoe``: MC-SMoE (Li et al., ICLR 2024, "Merge, Then Compress"), ``mc_smoe.py``;
- ``sub-moe``: Sub-MoE (Li et al., 2025, "Subspace Expert Merging"), ``sub_moe.py``;
- ``average``: the plain average of each group (the baseline both papers compare against),
  ``group_average.py``.

``compress.py`` (with ``compress_prune.py``, ``compress_finetune.py``, ``compress_store.py``)
is MC-SMoE's second step, ``--compress``: the merged experts as low rank plus row-sparse,
pruned while the model is fine-tuned. ``factored_folder.py`` writes the compressed model as a
folder that holds and runs those factors (``modeling_mc_smoe.py``, saved beside the weights).

``reduce.py`` writes the smaller model (fewer experts in the config, one router row per merged
expert) as an HF folder that transformers loads.
"""
