"""Model-level merges: methods that need two whole models and their activations on data.

The operators in ``evomerge.merge.ops`` merge one tensor at a time from the same tensor of every
model, which is what a search recipe can express. A method such as PLeaS changes the merged
model's width and solves each layer from both models' features on data, so it is a function
of whole models, not of tensors: it lives here and is called directly (``evomerge.model_merges
.digits`` for the digits zoo's MLPs; ``benchmarks/pleas_inits.py``).
"""
