"""The merge engine: a recipe in, merged tensors or a HF model folder out, one tensor at a time.

``plan.plan`` reads the models' headers and the recipe into a ``MergePlan`` (one ``TensorTask``
per output tensor: its sources, operator and resolved parameters, via ``params`` and
``weight_rules``; ``checks`` refuses mismatched models, ``tied_embeddings`` unties a tied head,
``calibration`` gives AIM its activations). ``engine.iter_merged_tensors`` computes each task with
its operator from ``ops`` (the fast path ``ops._fast`` is asked first and gives the same bits);
``engine.run_merge`` writes them to a folder. ``evomerge merge`` and the search's workers call the
same two, so an evaluated candidate and an exported merge are the same bytes.
"""
