"""PLeaS: partial permutation matching, then layer-wise least squares.

Nasery, Hayase, Koh, Oh 2025, "PLeaS: Merging Models with Permutations and Least Squares"
(CVPR 2025, arXiv 2407.02447; code SewoongLab/PLeaS-Merging). Two models of one architecture,
trained from different initialisations, merged into one model of a chosen width between one
model's (size 1) and both models' side by side (size 2).

Here for a chain of linear layers with ReLU between them (``Layer`` = ``(weight [out, in],
bias [out])``), the shape of the digits zoo's MLPs. ``x`` is the data both models read (the
task's training inputs, or public proxy inputs when there are none, as the paper's PLeaS-free).

1. Matching (Git Re-Basin's activation matching, Ainsworth et al. 2023). For each hidden layer,
   A's unit i and B's unit j are compared on ``x`` by the authors' default similarity, the
   negative Euclidean distance between their columns of features, summed over the layer's
   pre-activations and post-ReLU activations (the two nodes of its permutation group in their
   code); a linear assignment gives the permutation π maximizing Σ_i S[i, π(i)].
2. Partial matching. With keep fraction r = size − 1, the round(r·d) matched pairs of lowest
   similarity are not merged: both units are kept, A's and B's. The merged layer's units are
   [merged pairs, A's kept units, B's kept units], width (1 + r)·d. Its features are
   z_M = R_A z_A + R_B z_B (a merged unit is the mean of its pair); U_A, U_B read each model's
   units back from z_M (a merged unit stands for both members). The models' input and their
   output (the classes) are not permuted: R = ½·I and U = I there.
3. Permutation-only merge (the authors' ``partial_merge``; at size 1, Git Re-Basin's merge):
   W_M = R_A W_A U_A' + R_B W_B U_B' and b_M = R_A b_A + R_B b_B, U' the previous layer's. So
   A's kept units keep A's weights, merged units average their pair, and no weight links A's
   kept units to B's.
4. PLeaS: each layer's weights solve the least-squares problem
       min_{W, b} ‖ X_M W^T + b − T ‖²,  X_M = R_A z_A' + R_B z_B' (the inputs, from the source
       models' own features of the previous layer), T = R_A o_A + R_B o_B (the targets, the
       source models' pre-activations, permuted and merged the same way),
   with the structure of step 3 kept: rows of A's kept units read no input of B's kept units and
   vice versa. Each block of rows is an ordinary least-squares problem, solved in closed form.

Where this departs from the authors' code:
- Step 4 there is Adam on the same mean squared error (``pleas_merging.train``: 400-800 steps
  from the step-3 merge, a gradient mask for the structural zeros). Closed-form least squares is
  that objective's minimum (the minimum-norm one where the inputs are rank-deficient, e.g. dead
  ReLU units); the paper's name for the step.
- The output layer: their ``partial_merge`` concatenates the kept units' columns of the
  classifier unhalved and keeps model 1's bias (their experiments give each model its own
  head); here the output is merged like any layer whose units are not permuted, R = ½·I, so at
  size 2 the permutation-only merge is exactly the mean of the two models' logits.
- Per-layer keep fractions: the paper spreads a size budget over layers non-uniformly, by a QP
  over per-layer loss tables read from the authors' files (``qp_ratios``, Gurobi) or ZipIt's
  ratios; neither is given as a formula. One fraction is used for every hidden layer (the
  digits zoo's init pair has two hidden layers; an uneven split between them was not tried).
- The paper's method section could not be read from here (only its abstract and summaries);
  the steps above are read from the authors' code and agree with the abstract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evomerge.errors import UserInputError

PAPER = "Nasery et al. 2025, PLeaS: Merging Models with Permutations and Least Squares"
Layer = tuple[torch.Tensor, torch.Tensor]  # (weight [out, in], bias [out])
METHODS = ("pleas", "permute", "average")


@dataclass(frozen=True)
class Units:
    """How A's and B's units of one layer become the merged layer's, in its order:
    ``a_merged[k]`` with ``b_merged[k]`` first, then ``a_only``, then ``b_only``."""

    a_merged: torch.Tensor
    b_merged: torch.Tensor
    a_only: torch.Tensor
    b_only: torch.Tensor

    @classmethod
    def identity(cls, d: int) -> Units:
        """Unit i of A merged with unit i of B (an unpermuted layer, or plain averaging)."""
        i = torch.arange(d)
        return cls(i, i, i[:0], i[:0])

    @property
    def width(self) -> int:
        return len(self.a_merged) + len(self.a_only) + len(self.b_only)

    @property
    def source_width(self) -> int:
        return len(self.a_merged) + len(self.a_only)

    def blocks(self) -> tuple[slice, slice, slice]:
        """Slices of the merged, A-only and B-only units in the merged layer."""
        m, sa = len(self.a_merged), len(self.a_only)
        return slice(0, m), slice(m, m + sa), slice(m + sa, self.width)

    def zip(self, side: str) -> torch.Tensor:
        """R [merged width, source width]: z_M = R_A z_A + R_B z_B."""
        merged, only = self._side(side)
        r = torch.zeros(self.width, self.source_width, dtype=torch.float64)
        blk_m, blk_a, blk_b = self.blocks()
        r[torch.arange(blk_m.start, blk_m.stop), merged] = 0.5
        kept = blk_a if side == "a" else blk_b
        r[torch.arange(kept.start, kept.stop), only] = 1.0
        return r

    def unzip(self, side: str) -> torch.Tensor:
        """U [source width, merged width]: the merged unit that stands for each source unit."""
        merged, only = self._side(side)
        u = torch.zeros(self.source_width, self.width, dtype=torch.float64)
        blk_m, blk_a, blk_b = self.blocks()
        u[merged, torch.arange(blk_m.start, blk_m.stop)] = 1.0
        kept = blk_a if side == "a" else blk_b
        u[only, torch.arange(kept.start, kept.stop)] = 1.0
        return u

    def _side(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.a_merged, self.a_only) if side == "a" else (self.b_merged, self.b_only)


def features(layers: list[Layer], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, its ``(input, pre-activation output)`` on ``x`` (float64, one row per item)."""
    out = []
    h = x.double()
    for i, (w, b) in enumerate(layers):
        pre = h @ w.double().T + b.double()
        out.append((h, pre))
        h = torch.relu(pre) if i < len(layers) - 1 else pre
    return out


def similarity(pre_a: torch.Tensor, pre_b: torch.Tensor) -> torch.Tensor:
    """S[i, j] = −‖pre_a[:, i] − pre_b[:, j]‖ − ‖relu(pre_a)[:, i] − relu(pre_b)[:, j]‖."""
    s = -torch.cdist(pre_a.T, pre_b.T)
    return s - torch.cdist(torch.relu(pre_a).T, torch.relu(pre_b).T)


def match_units(pre_a: torch.Tensor, pre_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm, S)``: B's unit ``perm[i]`` is matched to A's unit i, maximizing Σ S[i, perm[i]]."""
    from scipy.optimize import linear_sum_assignment

    s = similarity(pre_a, pre_b)
    rows, cols = linear_sum_assignment(s.numpy(), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm, s


def split_units(perm: torch.Tensor, s: torch.Tensor, keep_fraction: float) -> Units:
    """Keep the ``round(keep_fraction · d)`` matched pairs of lowest similarity unmerged."""
    d = len(perm)
    matched = s[torch.arange(d), perm]
    order = torch.argsort(matched, stable=True)  # least similar first
    n_kept = round(keep_fraction * d)
    kept, merged = order[:n_kept].sort().values, order[n_kept:].sort().values
    return Units(merged, perm[merged], kept, perm[kept])


def check_size(size: float) -> float:
    if not 1.0 <= size <= 2.0:
        raise UserInputError(
            f"size: {size} is outside [1, 2]; PLeaS's merged width is between one model's (1) "
            "and both models' side by side (2)"
        )
    return size - 1.0


def plan_units(
    layers_a: list[Layer], layers_b: list[Layer], x: torch.Tensor, size: float, method: str
) -> list[Units]:
    """Units of every layer boundary: the input, each hidden layer, the output."""
    if method not in METHODS:
        raise UserInputError(f"method: {method!r} is unknown; valid: {', '.join(METHODS)}")
    keep = check_size(size)
    if method == "average" and keep:
        raise UserInputError("size: plain averaging gives one model's width; use size 1")
    dims = [layers_a[0][0].shape[1]] + [w.shape[0] for w, _ in layers_a]
    units = [Units.identity(d) for d in dims]
    if method == "average":
        return units
    feats_a, feats_b = features(layers_a, x), features(layers_b, x)
    for lay in range(len(layers_a) - 1):
        perm, s = match_units(feats_a[lay][1], feats_b[lay][1])
        units[lay + 1] = split_units(perm, s, keep)
    return units


def permute_merge(layers_a: list[Layer], layers_b: list[Layer], units: list[Units]) -> list[Layer]:
    """W_M = R_A W_A U_A' + R_B W_B U_B', b_M = R_A b_A + R_B b_B (step 3)."""
    merged = []
    for lay, ((wa, ba), (wb, bb)) in enumerate(zip(layers_a, layers_b)):
        prev, cur = units[lay], units[lay + 1]
        w_a = cur.zip("a") @ wa.double() @ prev.unzip("a")
        w_b = cur.zip("b") @ wb.double() @ prev.unzip("b")
        w = w_a + w_b
        b = cur.zip("a") @ ba.double() + cur.zip("b") @ bb.double()
        merged.append((w, b))
    return merged


def allowed_inputs(prev: Units, cur: Units) -> torch.Tensor:
    """Mask [out, in]: False where an A-only unit would read a B-only one, or the reverse."""
    mask = torch.ones(cur.width, prev.width, dtype=torch.bool)
    _, out_a, out_b = cur.blocks()
    _, in_a, in_b = prev.blocks()
    mask[out_a, in_b] = False
    mask[out_b, in_a] = False
    return mask


def parameter_count(units: list[Units]) -> int:
    """Weights and biases of the merged model that are not structural zeros (A's kept units
    reading B's): the size a sparse layout would store, the authors' FLOPs count."""
    pairs = zip(units[:-1], units[1:])
    return sum(int(allowed_inputs(prev, cur).sum()) + cur.width for prev, cur in pairs)


def solve_layer(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> Layer:
    """min ‖x W^T + b − target‖² with W[o, i] = 0 where ``mask`` is False, one least-squares
    problem per group of rows that read the same inputs (minimum norm where x is rank-deficient)."""
    w = torch.zeros(target.shape[1], x.shape[1], dtype=torch.float64)
    b = torch.zeros(target.shape[1], dtype=torch.float64)
    ones = torch.ones(len(x), 1, dtype=torch.float64)
    patterns, group = torch.unique(mask, dim=0, return_inverse=True)
    for g, cols in enumerate(patterns):
        rows = (group == g).nonzero().squeeze(1)
        design = torch.cat([x[:, cols], ones], dim=1)
        sol = torch.linalg.lstsq(design, target[:, rows], driver="gelsd").solution  # [in+1, rows]
        w[rows.unsqueeze(1), cols.nonzero().squeeze(1)] = sol[:-1].T
        b[rows] = sol[-1]
    return w, b


def least_squares_merge(
    layers_a: list[Layer], layers_b: list[Layer], units: list[Units], x: torch.Tensor
) -> list[Layer]:
    """Step 4: every layer's weights fit to the merged features of the source models."""
    feats_a, feats_b = features(layers_a, x), features(layers_b, x)
    merged = []
    for lay in range(len(layers_a)):
        prev, cur = units[lay], units[lay + 1]
        (in_a, pre_a), (in_b, pre_b) = feats_a[lay], feats_b[lay]
        inputs = in_a @ prev.zip("a").T + in_b @ prev.zip("b").T
        target = pre_a @ cur.zip("a").T + pre_b @ cur.zip("b").T
        merged.append(solve_layer(inputs, target, allowed_inputs(prev, cur)))
    return merged


def merge(
    layers_a: list[Layer],
    layers_b: list[Layer],
    x: torch.Tensor,
    *,
    size: float = 1.0,
    method: str = "pleas",
) -> tuple[list[Layer], list[Units]]:
    """Merge two ReLU chains on data ``x``: ``method`` ``pleas`` (steps 1-4), ``permute``
    (steps 1-3; at size 1 Git Re-Basin) or ``average`` (plain weight averaging, size 1).
    Returns the merged layers (float64) and the units of every layer boundary."""
    if len(layers_a) != len(layers_b) or any(
        wa.shape != wb.shape for (wa, _), (wb, _) in zip(layers_a, layers_b)
    ):
        raise UserInputError(
            "models: PLeaS merges two models of one architecture; their layer shapes differ"
        )
    units = plan_units(layers_a, layers_b, x, size, method)
    if method == "pleas":
        return least_squares_merge(layers_a, layers_b, units, x), units
    return permute_merge(layers_a, layers_b, units), units
