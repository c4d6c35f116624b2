"""Connecting to Ray: an embedded cluster on loopback (``--workers N``) or a running one
(``--ray-address``), and a multi-node cluster on one machine for tests and benchmarks.

The embedded cluster binds every Ray process to 127.0.0.1: a laptop search must not open ports
on the network. ``--ray-address`` joins whatever cluster the user started (``slurm/`` starts one
over a SLURM allocation); the evaluator then never shuts that cluster down.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from evomerge.errors import UserInputError

LOOPBACK = "127.0.0.1"
# Ray (2.60 here) turns token authentication on for a new local cluster and says so with a
# WARNING line on every start; for the embedded loopback cluster that is the secure default we
# want, not something to warn a user about (docs/cluster.md says how to opt out).
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def import_ray() -> Any:
    # Ray reads this at import: a local ray.init() then binds to loopback only.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise UserInputError(
            "workers > 1 / ray_address need Ray: pip install 'evomerge[ray]'"
        ) from None
    return ray


def connect(
    address: str | None,
    *,
    num_cpus: float | None = None,
    object_store_memory: int | None = None,
) -> tuple[Any, bool]:
    """(ray module, owned): ``owned`` is True when this call started the cluster (and so the
    evaluator shuts it down on close). An already initialized Ray (e.g. a notebook or a test
    that started its own cluster) is reused as is."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    common = {"include_dashboard": False, "log_to_driver": True, "logging_level": "warning"}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserInputError(
                f"ray_address {address!r}: cannot join that Ray cluster ({err}); start it first "
                "(ray start --head, or slurm/search.sbatch) or drop --ray-address"
            ) from None
        return ray, True
    with _without_token_notice():
        ray.init(
            # "local": always a new cluster, never one another process left in /tmp/ray
            address="local",
            num_cpus=int(num_cpus) if num_cpus else None,
            num_gpus=None,
            object_store_memory=object_store_memory,
            _node_ip_address=LOOPBACK,
            **common,
        )
    return ray, True


@contextlib.contextmanager
def _without_token_notice() -> Iterator[None]:
    """Drop only Ray's notice that token authentication is on (its default for a new local
    cluster); every other message still shows."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_NOTICE)

    log = logging.getLogger(_TOKEN_LOGGER)
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def local_cluster(nodes: list[dict[str, Any]], *, object_store_memory: int = 150 * 2**20) -> Any:
    """A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): one raylet
    and one object store per entry of ``nodes`` (``ray.init``-style resources, e.g.
    ``{"num_cpus": 1}``), all on loopback, the dashboard off. Call ``.shutdown()`` when done."""
    import_ray()
    from ray.cluster_utils import Cluster

    base = {"include_dashboard": False, "object_store_memory": object_store_memory}
    head, *rest = nodes
    cluster = Cluster(initialize_head=True, head_node_args={**base, **head})
    for spec in rest:
        cluster.add_node(**{**base, **spec})
    cluster.wait_for_nodes()
    return cluster


def cluster_capacity(ray: Any, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many workers the connected cluster can host at once."""
    total = ray.cluster_resources()
    if gpus_per_worker > 0:
        return int(total.get("GPU", 0) // gpus_per_worker)
    return int(total.get("CPU", 0) // max(cpus_per_worker, 1e-9))
