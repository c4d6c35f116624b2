"""Few-item fitness estimators: anchor points, IRT, p-IRT and gp-IRT.

Papers:
* tinyBenchmarks (Maia Polo et al., ICML 2024, arXiv 2402.14992): anchor points by k-means
  clustering of items (on the models' correctness vectors, or on the items' IRT parameters),
  each anchor weighted by its cluster's share of the items; a multidimensional 2-parameter IRT
  model ``P(correct) = sigmoid(alpha_i . theta_l - beta_i)`` fitted on already evaluated models;
  a new model's ability ``theta`` fitted by maximum likelihood on the anchors only; p-IRT, the
  observed anchors and the IRT predictions for the other items mixed by the share of items seen
  (``lambda = k / N``); gp-IRT, ``lambda * anchor mean + (1 - lambda) * p-IRT``.
* MERGE3 (Mencattini et al., ICML 2025, arXiv 2502.10436): the same estimators used as the
  fitness of an evolutionary merge, with mp-IRT: the merged model's ability is a linear
  combination ``theta = sum_j lambda_j theta_j`` of its endpoint models' abilities, the
  ``lambda`` fitted by maximum likelihood on the anchors (its released code, mergenetic:
  unconstrained ``lambda``, BFGS from the even split), then p-IRT from that ability; gmp-IRT
  mixes it with the anchors' weighted mean at a fixed ``delta = 0.5``. When the endpoints'
  abilities span the ability space (one dimension: any endpoint with theta != 0), the
  likelihood is concave in theta and the combination reaches the free fit's optimum: mp-IRT
  then equals IRT's ability fit; it differs when there are fewer endpoints than dimensions (or
  collinear ones), and in how BFGS stops when the optimum is at infinity (anchors all right).

Where this departs from them, and why:
* The IRT model is fitted by MAP with fixed N(0, 1) priors on every theta, alpha and beta
  (L-BFGS on the exact gradient), not by py-irt's variational inference with hierarchical
  priors: a search has tens of fitted models, not hundreds, and a point estimate with priors
  is what is affordable at each generation; the priors keep an item every fitted model got
  right (or wrong) from diverging.
* Per-item scores in [0, 1] enter the likelihood as Bernoulli cross-entropy targets (the zoo's
  items are 0/1 exact match, so this is the paper's likelihood there).
* gp-IRT's ``lambda``: the paper's text gives no closed formula we could check; its released
  tool uses a per-scenario ``lambda`` chosen on validation models. ``gp_irt_lambda`` does that:
  the most recently scored quarter of the fitted models is held out, the IRT model is refitted
  on the rest, and the ``lambda`` of the grid 0, 0.1, ..., 1 with the smallest mean absolute
  error on the held-out models is kept. A fixed ``lambda`` (MERGE3's 0.5) can be given instead.
* A new model's ability is fitted as the paper's tool does (maximum likelihood, no prior,
  BFGS from zero), so anchors all right (or all wrong) push it far out and the predictions on
  the unseen items towards 1 (or 0); the benchmark measures that as it is.
* Each anchor is the member of its cluster closest to the centroid (the paper takes the item
  closest to the centroid), so two clusters never share an anchor.
* Items carry weights (their share of the fitness, summing to 1); a uniform pool has 1/N each.

scipy (L-BFGS) and scikit-learn (k-means) come with the ``zoo`` extra.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

LAMBDA_GRID = tuple(i / 10 for i in range(11))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


@dataclass(frozen=True)
class IRTModel:
    """A fitted multidimensional 2PL model: ``alpha`` (items x dims), ``beta`` (items), and the
    fitted models' abilities ``theta`` (models x dims)."""

    alpha: np.ndarray
    beta: np.ndarray
    theta: np.ndarray

    def prob(self, theta: np.ndarray) -> np.ndarray:
        """P(correct) on every item for one ability vector."""
        return _sigmoid(self.alpha @ theta - self.beta)


def fit_irt(y: np.ndarray, dims: int = 1, seed: int = 0) -> IRTModel:
    """MAP fit of the 2PL model on a (models x items) score matrix (scores in [0, 1])."""
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=float)
    m, n = y.shape
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([0.1 * rng.standard_normal(m * dims + n * dims), np.zeros(n)])

    def unpack(x):
        th = x[: m * dims].reshape(m, dims)
        al = x[m * dims : m * dims + n * dims].reshape(n, dims)
        return th, al, x[m * dims + n * dims :]

    def loss(x):
        th, al, be = unpack(x)
        z = th @ al.T - be
        # log(1 + e^z) - y z, stably
        nll = np.sum(np.logaddexp(0.0, z) - y * z)
        prior = 0.5 * (np.sum(th**2) + np.sum(al**2) + np.sum(be**2))
        g = _sigmoid(z) - y
        grad = np.concatenate([(g @ al + th).ravel(), (g.T @ th + al).ravel(), -g.sum(0) + be])
        return nll + prior, grad

    res = minimize(loss, x0, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    th, al, be = unpack(res.x)
    return IRTModel(alpha=al, beta=be, theta=th)


def fit_ability(model: IRTModel, items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Maximum-likelihood ability of a new model from its scores on ``items`` only (the paper's
    fit: no prior, BFGS from zero)."""
    from scipy.optimize import minimize

    al, be, s = model.alpha[items], model.beta[items], np.asarray(scores, dtype=float)

    def loss(t):
        z = al @ t - be
        return np.sum(np.logaddexp(0.0, z) - s * z), al.T @ (_sigmoid(z) - s)

    return minimize(loss, np.zeros(al.shape[1]), jac=True, method="BFGS").x


def fit_ability_mp(
    model: IRTModel, items: np.ndarray, scores: np.ndarray, endpoints: np.ndarray
) -> np.ndarray:
    """MERGE3's mp-IRT ability: ``lambda @ endpoints`` (rows: the endpoint models' fitted
    abilities), ``lambda`` by maximum likelihood on ``items`` (unconstrained, BFGS from the
    even split, as mergenetic's ``fit_lambda``)."""
    from scipy.optimize import minimize

    al, be, s = model.alpha[items], model.beta[items], np.asarray(scores, dtype=float)
    th = np.asarray(endpoints, dtype=float)
    proj = al @ th.T  # items x endpoints: z = proj @ lambda - beta

    def loss(lam):
        z = proj @ lam - be
        return np.sum(np.logaddexp(0.0, z) - s * z), proj.T @ (_sigmoid(z) - s)

    lam0 = np.full(th.shape[0], 1.0 / th.shape[0])
    return minimize(loss, lam0, jac=True, method="BFGS").x @ th


@dataclass(frozen=True)
class Anchors:
    items: np.ndarray  # pool positions of the anchor items
    weights: np.ndarray  # each anchor's cluster share of the item weights (sum 1)


def select_anchors(
    embedding: np.ndarray, k: int, item_weights: np.ndarray | None = None, seed: int = 0
) -> Anchors:
    """k anchor items by weighted k-means on per-item ``embedding`` rows (the items' correctness
    vectors over the fitted models, or their IRT parameters); each anchor is the member of its
    cluster closest to the centroid and weighs its cluster's share of the item weights. Fewer
    than k anchors come back when fewer than k distinct rows exist. Deterministic for a given
    seed."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(embedding, dtype=float)
    n = x.shape[0]
    w = np.full(n, 1.0 / n) if item_weights is None else np.asarray(item_weights, dtype=float)
    if not 1 <= k <= n:
        raise ValueError(f"anchors: k = {k} must be between 1 and the {n} items of the pool")
    with warnings.catch_warnings():
        # items with identical rows (e.g. every fitted model wrong) leave fewer distinct
        # clusters than k: expected here, the empty clusters are skipped below
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x, sample_weight=w)
    items, weights = [], []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if members.size == 0:  # k-means can leave a cluster empty on tied points
            continue
        d = np.linalg.norm(x[members] - km.cluster_centers_[c], axis=1)
        items.append(int(members[np.argmin(d)]))
        weights.append(float(w[members].sum()))
    order = np.argsort(items)
    return Anchors(np.array(items)[order], np.array(weights)[order] / np.sum(weights))


def irt_embedding(model: IRTModel) -> np.ndarray:
    """The paper's IRT item representation: (alpha_i, beta_i)."""
    return np.column_stack([model.alpha, model.beta])


def anchor_estimate(anchors: Anchors, scores: np.ndarray) -> float:
    """Anchor-weighted mean of a model's anchor scores."""
    return float(np.dot(anchors.weights, scores))


def irt_estimates(
    model: IRTModel,
    anchors: Anchors,
    scores: np.ndarray,
    w: np.ndarray,
    lams=(),
    theta: np.ndarray | None = None,
) -> dict[str, float]:
    """One ability fit on the anchors (or ``theta`` as given: mp-IRT's), and from it:

    * ``irt``: the weighted mean of the predicted P(correct) over every item;
    * ``pirt``: ``lambda`` x (weighted mean of the observed anchors) + (1 - lambda) x (weighted
      mean of the predictions on the unseen items), ``lambda`` = the share of the item weight
      seen;
    * ``gpirt@<lam>`` for each ``lam`` of ``lams``: ``lam`` x anchor-weighted mean +
      (1 - lam) x p-IRT.
    """
    scores = np.asarray(scores, dtype=float)
    if theta is None:
        theta = fit_ability(model, anchors.items, scores)
    p = model.prob(theta)
    seen = np.zeros(len(w), dtype=bool)
    seen[anchors.items] = True
    share = float(w[seen].sum())
    # anchors.items is sorted and unique, so w[seen] lines up with scores
    observed = float(np.dot(w[seen], scores) / share)
    unseen = float(np.dot(w[~seen], p[~seen]) / w[~seen].sum()) if share < 1.0 else 0.0
    pirt = observed if share >= 1.0 else share * observed + (1 - share) * unseen
    out = {"irt": float(np.dot(w, p)), "pirt": pirt}
    a = anchor_estimate(anchors, scores)
    for lam in lams:
        out[f"gpirt@{lam:g}"] = lam * a + (1 - lam) * pirt
    return out


def gp_irt_lambda(y: np.ndarray, w: np.ndarray, k: int, dims: int = 1, seed: int = 0) -> float:
    """gp-IRT's ``lambda`` chosen on validation models, as tinyBenchmarks' tool does: hold out
    the last quarter of the rows of ``y`` (the most recently scored models), fit IRT and pick
    anchors on the rest, and keep the grid value with the smallest mean absolute error on the
    held-out models' weighted means. Fewer than 4 models: 0.5 (MERGE3's fixed mix)."""
    y = np.asarray(y, dtype=float)
    m = y.shape[0]
    if m < 4:
        return 0.5
    n_val = max(1, m // 4)
    fit, val = y[: m - n_val], y[m - n_val :]
    model = fit_irt(fit, dims=dims, seed=seed)
    anchors = select_anchors(irt_embedding(model), k, w, seed=seed)
    truth = val @ w
    a = np.array([anchor_estimate(anchors, r[anchors.items]) for r in val])
    p = np.array([irt_estimates(model, anchors, r[anchors.items], w)["pirt"] for r in val])
    errors = [np.mean(np.abs(lam * a + (1 - lam) * p - truth)) for lam in LAMBDA_GRID]
    return float(LAMBDA_GRID[int(np.argmin(errors))])
