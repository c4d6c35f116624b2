"""What shapes a zoo's trained bytes besides its spec: the build format, the CPU kernels and the
library versions. A zoo's manifest records them, and a cached trained model is reused only when
they match (``evomerge.zoo.model_cache``)."""

from __future__ import annotations

from evomerge.zoo import pinned

# 2: trained with pinned, machine-independent kernels (zoo/pinned.py); manifest has a digest
FORMAT_VERSION = 2


def training_libraries() -> dict[str, str]:
    """The versions that shape the trained bytes besides the CPU kernels (torch's ops,
    transformers' model code, numpy's draws): two zoos compare only when these match."""
    from importlib.metadata import version

    return {lib: version(lib) for lib in ("torch", "transformers", "numpy")}


def provenance() -> dict:
    return {
        "format": FORMAT_VERSION,
        "kernels": pinned.kernels_label(),
        "libraries": training_libraries(),
    }
