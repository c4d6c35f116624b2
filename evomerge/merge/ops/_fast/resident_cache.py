"""ResidentCache: what a candidate's merge needs that does not depend on the candidate.

A search merges the same experts thousands of times with new weights and densities. Parts of a
merge that do not change between candidates, and dominate their cost:

* magnitude top-k (TIES, Breadcrumbs): the k-th largest |τ_i| of an expert tensor is, for any
  density, a lookup in the ascending sorted |τ_i| (``top_k.top_k_sorted``); the selection
  (``kthvalue``, ~2/3 of a TIES candidate) becomes two binary searches, the mask one comparison;
* random keep masks (DARE, DELLA): with the recipe's seed the generator of a tensor yields the
  same uniforms u for every candidate, and the mask for keep rate p is ``u < p``; caching u
  skips the draw (most of a DARE candidate). DARE's fused kernel takes them packed, 3 bytes
  each (``packed_uniform``). DELLA's per-row magnitude ranks are cached too;
* Σ|τ_i| (the L1 rescale of DARE/DELLA, a scalar) and, for task arithmetic, τ_i itself;
* DARE's kept Σ|τ_i| for any keep rate: a per-bucket table of exact sums and, for each bucket
  a candidate's rate has fallen in, that bucket's members (``dare_l1``).

Every entry is exactly what the uncached operator computes, so results are bit for bit those of
``evomerge merge`` (which never uses this cache).

Memory: float32, one value per element, so ~1× the experts' float32 bytes for each kind in use
(sorted magnitudes for TIES/Breadcrumbs, uniforms for DARE — packed: 3/4 of that — both for
DELLA, task vectors for task arithmetic). ``max_bytes`` bounds it (``ExpertCache`` sets 1× the
loaded models' bytes): entries are admitted until the budget is full and later ones are
computed without caching. (Every candidate visits every tensor in the same order, a cycle on
which LRU would miss every time; first come, first kept keeps a fixed share hitting.) DARE's
bucket members are the exception: a candidate uses only the buckets its keep rates fall in,
which drift as the search does, so when the budget is full a new bucket's members replace the
least recently used ones that the current candidate has not used (``begin_candidate`` marks
where one starts; benchmarks/dare_drift.py). Per-expert entries are keyed by the (expert,
tensor) and (base, tensor) they come from; uniforms by (seed, tensor, draw index, shape), and
a new seed drops the previous seed's draws before it is served.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

Budget = int | Callable[[], int] | None
_TABLE_BYTES = 1 << 17  # a DARE L1 table's typical size (dare_l1.py)


class ResidentCache:
    """Bounded store of candidate-independent tensors; ``for_task`` gives an operator its view."""

    def __init__(self, max_bytes: Budget = None) -> None:
        self.max_bytes = max_bytes  # bytes, a callable giving them, or None: unbounded
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple, torch.Tensor] = {}
        self._seed: int | None = None
        # DARE bucket members' keys, least recently used first: the candidate that last used each
        self._members: OrderedDict[tuple, int] = OrderedDict()
        self._candidate = 0

    def begin_candidate(self) -> None:
        """A new candidate's merge starts (the engine bridge calls this): bucket members the
        previous ones used may now make room for its new buckets."""
        self._candidate += 1

    def for_task(self, task: Any, seed: int) -> TaskStats:
        """The view for one output tensor (an ``evomerge.merge.plan.TensorTask``)."""
        if seed != self._seed:
            self._drop("uniform")  # draws of another seed can never be served again
            self._drop("dare_l1")
            self._seed = seed
        return TaskStats(self, task, seed)

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        value = make()
        self.put(key, value)
        return value

    def put(self, key: tuple, value: Any) -> None:
        size = value.nbytes  # a tensor, or a table with its own nbytes (dare_l1.py)
        if key not in self._entries and self.nbytes + size <= self._limit():
            self._entries[key] = value
            self.nbytes += size

    def member(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``get`` for DARE bucket members: least recently used first out (``_make_room``)."""
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            self._members[key] = self._candidate
            self._members.move_to_end(key)
            return hit
        self.misses += 1
        value = make()
        if self._make_room(value.nbytes):
            self.put(key, value)  # (admitted: there is room now)
            self._members[key] = self._candidate
        return value

    def _make_room(self, size: int) -> bool:
        """Room for ``size`` more bytes: free, or made by evicting the least recently used
        members no part of the current candidate has used (one candidate never evicts its
        own: that would be the cycle LRU misses on). False, evicting nothing, when those
        would not free enough."""
        need = self.nbytes + size - self._limit()
        if need <= 0:
            return True
        victims, freed = [], 0
        for key, used in self._members.items():  # by last use: the first are the oldest
            if used >= self._candidate or freed >= need:
                break
            victims.append(key)
            freed += self._entries[key].nbytes
        if freed < need:
            return False
        for key in victims:
            self.nbytes -= self._entries.pop(key).nbytes
            del self._members[key]
        return True

    def has_room(self, nbytes: int) -> bool:
        return self.nbytes + nbytes <= self._limit()

    def clear(self) -> None:
        self._entries.clear()
        self._members.clear()
        self.nbytes = 0

    def _limit(self) -> float:
        b = self.max_bytes
        if b is None:
            return float("inf")
        return b() if callable(b) else b

    def _drop(self, kind: str) -> None:
        for key in [k for k in self._entries if k[0] == kind]:
            self.nbytes -= self._entries.pop(key).nbytes
            self._members.pop(key, None)


class TaskStats:
    """One output tensor's cached inputs, indexed by the operator's model position ``i``.

    ``uniform`` serves the tensor generator's draws in order (``generator`` None: the engine's
    ``generator_for(seed, tensor name)``, made lazily): the j-th call returns the j-th
    block that generator would produce, whether it comes from the cache or is drawn now (blocks
    served from the cache never advanced the generator, so those are skipped by drawing)."""

    def __init__(self, cache: ResidentCache, task: Any, seed: int) -> None:
        self.cache = cache
        self.task = task
        self.seed = seed
        self._next = 0  # index of the next block the operator asks for
        self._drawn = 0  # blocks the operator's generator has produced so far
        self._shapes: list[tuple[int, ...]] = []
        self._gen: torch.Generator | None = None

    def sorted_abs(self, i: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Ascending flat |τ_i| of the i-th input against the base."""
        return self.cache.get(("sorted", self.task.inputs[i], self.task.base), make)

    def descending_order(self, i: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """mergekit's ``argsort(|τ_i|, descending=True)`` (its tie order at a top-k threshold)."""
        return self.cache.get(("order", self.task.inputs[i], self.task.base), make)

    def rank01(self, i: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """DELLA's per-row magnitude rank fractions of τ_i."""
        return self.cache.get(("rank01", self.task.inputs[i], self.task.base), make)

    def task_vector(self, i: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """τ_i = θ_i − θ_base (task arithmetic: saves a subtraction per model and candidate)."""
        return self.cache.get(("tau", self.task.inputs[i], self.task.base), make)

    def l1(self, i: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Σ |τ_i| (the L1 rescale's numerator), a 0-d tensor."""
        return self.cache.get(("l1", self.task.inputs[i], self.task.base), make)

    def dare_table(self, i: int, make: Callable[[], Any]) -> Any:
        """DARE's bucketed L1 table (``dare_l1``) of τ_i and the uniforms drawn
        last (model i's: the operator asks right after drawing them)."""
        key = self._dare_key(i)
        if key not in self.cache._entries and not self.cache.has_room(_TABLE_BYTES):
            return None  # no room: building it for one candidate costs more than a direct pass
        return self.cache.get(key, make)

    def dare_members(self, i: int, q: int, make: Callable[[], Any]) -> Any:
        """Bucket q's members (``dare_l1.members``) of model i's uniforms drawn last (those of
        ``dare_table``); kept least recently used first out (``ResidentCache.member``)."""
        return self.cache.member(self._dare_key(i) + (q,), make)

    def _dare_key(self, i: int) -> tuple:
        """Model i's DARE entries: its tensor and base, and the draw just made (``dare_l1``
        entries are dropped with the seed's draws)."""
        t = self.task
        return ("dare_l1", self.seed, t.name, self._next - 1, t.inputs[i], t.base)

    def uniform(
        self, shape: tuple[int, ...], generator: torch.Generator | None, packed: bool = False
    ) -> Any:
        """The next block of uniforms: a float32 tensor of ``shape``, or with ``packed`` the
        same values flat and packed (``packed_uniform``, DARE's fused kernel);
        each form is cached under its own key."""
        from evomerge.merge.ops._fast import mt_uniform

        uniform = mt_uniform.uniform_packed if packed else mt_uniform.uniform
        j = self._next
        self._next += 1
        self._shapes.append(shape)
        key = ("uniform", self.seed, self.task.name, j, shape, packed)
        hit = self.cache._entries.get(key)
        if hit is not None:
            self.cache.hits += 1
            return hit
        self.cache.misses += 1
        generator = generator or self._generator()
        while self._drawn < j:  # position the generator: redraw what the cache served
            m = self._drawn
            self.cache.put(
                ("uniform", self.seed, self.task.name, m, self._shapes[m], packed),
                uniform(self._shapes[m], generator),
            )
            self._drawn += 1
        u = uniform(shape, generator)
        self._drawn += 1
        self.cache.put(key, u)
        return u

    def _generator(self) -> torch.Generator:
        """The engine's generator of this tensor, made on the first miss only (when every draw
        is served, hashing the seed and seeding a Mersenne Twister is skipped)."""
        from evomerge.merge.ops import generator_for

        if self._gen is None:
            self._gen = generator_for(self.seed, self.task.name)
        return self._gen

    def draw(
        self, generator: torch.Generator | None, packed: bool = False
    ) -> Callable[[tuple[int, ...]], Any]:
        return lambda shape: self.uniform(shape, generator, packed)
