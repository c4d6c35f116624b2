"""A model of libstdc++'s ``std::sort`` (bits/stl_algo.h, bits/stl_heap.h) for tests: the sort
torch's CPU argsort runs, and what ``_fused_gta.c``'s ``tie_select`` follows. With McIlroy's
adversary ("A Killer Adversary for Quicksort", 1999) it builds inputs that drive the sort to its
depth limit, where it heap-sorts a range: the rarely taken path that tests must still reach."""

from __future__ import annotations

from collections.abc import Callable

THRESHOLD = 16  # _S_threshold

Less = Callable[[int, int], bool]


def std_sort(a: list[int], less: Less, on_heap: Callable[[int, int], None] = lambda f, last: None):
    """Sorts ``a`` in place as ``std::sort(a.begin(), a.end(), less)``; ``on_heap(first, last)``
    is told of each range the depth limit hands to the heap sort."""

    def swap(i: int, j: int) -> None:
        a[i], a[j] = a[j], a[i]

    def median_to_first(r: int, x: int, y: int, z: int) -> None:
        if less(a[x], a[y]):
            if less(a[y], a[z]):
                swap(r, y)
            elif less(a[x], a[z]):
                swap(r, z)
            else:
                swap(r, x)
        elif less(a[x], a[z]):
            swap(r, x)
        elif less(a[y], a[z]):
            swap(r, z)
        else:
            swap(r, y)

    def partition(f: int, last: int, p: int) -> int:
        while True:
            while less(a[f], a[p]):
                f += 1
            last -= 1
            while less(a[p], a[last]):
                last -= 1
            if not f < last:
                return f
            swap(f, last)
            f += 1

    def adjust_heap(base: int, hole: int, n: int, value: int) -> None:
        top = child = hole
        while child < (n - 1) // 2:
            child = 2 * (child + 1)
            if less(a[base + child], a[base + child - 1]):
                child -= 1
            a[base + hole] = a[base + child]
            hole = child
        if n % 2 == 0 and child == (n - 2) // 2:
            child = 2 * (child + 1)
            a[base + hole] = a[base + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(a[base + parent], value):
            a[base + hole] = a[base + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[base + hole] = value

    def heap_sort(f: int, last: int) -> None:
        n = last - f
        if n >= 2:
            for parent in range((n - 2) // 2, -1, -1):
                adjust_heap(f, parent, n, a[f + parent])
        while last - f > 1:
            last -= 1
            value = a[last]
            a[last] = a[f]
            adjust_heap(f, 0, last - f, value)

    def introsort(f: int, last: int, depth: int) -> None:
        while last - f > THRESHOLD:
            if depth == 0:
                on_heap(f, last)
                heap_sort(f, last)
                return
            depth -= 1
            median_to_first(f, f + 1, f + (last - f) // 2, last - 1)
            cut = partition(f + 1, last, f)
            introsort(cut, last, depth)
            last = cut

    def insertion_sort(f: int, last: int) -> None:  # (guarded: the same moves as unguarded)
        for i in range(f + 1, last):
            value, j = a[i], i
            while j > f and less(value, a[j - 1]):
                a[j] = a[j - 1]
                j -= 1
            a[j] = value

    if a:
        introsort(0, len(a), 2 * (len(a).bit_length() - 1))
        insertion_sort(0, len(a))


def killer(n: int) -> list[int]:
    """Keys (≥ 0) on which ``std_sort`` descending reaches its depth limit, with ties: McIlroy's
    adversary decides comparisons as the sort makes them until the first heap sort, then leaves
    the undecided entries ("gas") equal."""
    gas = n
    val = [gas] * n
    state = {"solid": 0, "candidate": -1, "adversary": True}

    def freeze(x: int) -> None:
        val[x] = state["solid"]
        state["solid"] += 1

    def less(x: int, y: int) -> bool:  # descending: x before y iff key(x) > key(y)
        if state["adversary"]:
            if val[x] == gas and val[y] == gas:
                freeze(x if x == state["candidate"] else y)
            if val[x] == gas:
                state["candidate"] = x
            elif val[y] == gas:
                state["candidate"] = y
        return val[x] > val[y]

    def stop(first: int, last: int) -> None:
        state["adversary"] = False

    std_sort(list(range(n)), less, stop)
    return val
