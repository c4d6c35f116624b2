"""Twin-Merging (Lu et al., NeurIPS 2024, arXiv 2406.15479): a shared static merge plus each
expert's SVD-compressed exclusive knowledge, mixed per input by a small router. ``build.py``
makes the model folder; ``modeling_twin_merging.py`` is the model, saved beside its weights."""
