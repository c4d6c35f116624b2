"""MC-SMoE's expert alignment: permute an expert's hidden neurons to match another's before
averaging them (after Git Re-Basin's weight matching, Ainsworth et al. 2023).

Neuron ``j`` of a SwiGLU expert is row ``j`` of ``gate`` and ``up`` and column ``j`` of
``down``; permuting them together leaves the expert's function unchanged. Weight matching picks
the permutation that maximizes the summed inner products of matched neurons' weights, a linear
assignment (the Hungarian method, scipy's ``linear_sum_assignment``).
"""

from __future__ import annotations

import torch

from evomerge.errors import UserInputError
from evomerge.moe.experts import Expert


def neuron_features(ex: Expert) -> torch.Tensor:
    """[I, 3H]: each hidden neuron's gate row, up row and down column."""
    return torch.cat([ex.gate, ex.up, ex.down.T], dim=1).double()


def match_neurons(reference: Expert, other: Expert) -> torch.Tensor:
    """``perm`` with ``other``'s neuron ``perm[j]`` matched to ``reference``'s neuron ``j``."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise UserInputError(
            "--method mc-smoe aligns experts with scipy's linear_sum_assignment: "
            "pip install 'evomerge[moe]'"
        ) from None

    score = neuron_features(reference) @ neuron_features(other).T  # [I, I]
    rows, cols = linear_sum_assignment(score.numpy(), maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


def permute(ex: Expert, perm: torch.Tensor) -> Expert:
    return Expert(ex.gate[perm], ex.up[perm], ex.down[:, perm])


def align_to(reference: Expert, other: Expert) -> Expert:
    return permute(other, match_neurons(reference, other))
