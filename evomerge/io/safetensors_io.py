"""Minimal safetensors reading and writing with explicit offsets.

Why not ``safetensors.safe_open``: it memory-maps whole shards, and every page a merge touches
then counts towards the process' resident set. Each tensor here gets its own buffer, read with
``os.pread`` or mapped on its own (``map_tensor``, freed with the tensor), so peak memory stays at
"the tensors being merged right now"; parsing the header ourselves lets a corrupt file fail with
one line naming the file instead of a Rust panic.
Writing is planned: every output shape is known before the first tensor is computed, so each
shard's header is written first and tensors land at their offsets as they stream in.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.errors import UserInputError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor name -> TensorInfo, metadata); a UserInputError naming the file when corrupt."""
    fix = "re-download or re-save this checkpoint"
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UserInputError(f"{path}: corrupt safetensors (file shorter than 8 bytes); {fix}")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise UserInputError(f"{path}: corrupt safetensors header (length {n}); {fix}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise UserInputError(f"{path}: corrupt safetensors header (not JSON); {fix}") from None
    if not isinstance(header, dict):
        raise UserInputError(f"{path}: corrupt safetensors header (not a mapping); {fix}")
    meta = header.pop("__metadata__", None) or {}
    infos = {name: _info(path, name, h, 8 + n, size, fix) for name, h in header.items()}
    return infos, meta


def _info(path: Path, name: str, h: object, data_start: int, size: int, fix: str) -> TensorInfo:
    try:
        dtype = DTYPES[h["dtype"]]  # type: ignore[index]
        shape = tuple(int(x) for x in h["shape"])  # type: ignore[index]
        a, b = (int(x) for x in h["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise UserInputError(
            f"{path}: corrupt safetensors entry for tensor {name!r}; {fix}"
        ) from None
    numel = 1
    for d in shape:
        numel *= d
    if b - a != numel * dtype.itemsize or a < 0 or data_start + b > size:
        raise UserInputError(
            f"{path}: tensor {name!r} has offsets [{a}, {b}) that do not fit its shape "
            f"{list(shape)} or the file size (truncated download?); {fix}"
        )
    return TensorInfo(path, dtype, shape, data_start + a, b - a)


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """One tensor, read into its own buffer (no mmap)."""
    buf = bytearray(info.nbytes)
    fd = os.open(info.file, os.O_RDONLY)
    try:
        view, done = memoryview(buf), 0
        while done < info.nbytes:
            got = os.preadv(fd, [view[done:]], info.start + done)
            if got <= 0:
                raise UserInputError(f"{info.file}: unexpected end of file; re-save the checkpoint")
            done += got
    finally:
        os.close(fd)
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    return torch.frombuffer(buf, dtype=info.dtype).reshape(info.shape)


def map_tensor(info: TensorInfo) -> torch.Tensor:
    """One tensor as a private (copy-on-write) mapping of its own bytes in the file, unmapped
    when the tensor is freed; writes to it never reach the file. Why: a merge reads each input
    once, and the kernel or the float32 conversion then reads the page cache directly instead
    of a copy of it (``read_tensor`` copies every byte once more, which was the critical path
    of an I/O-bound linear merge). Pages fault in on first touch (not MAP_POPULATE: on a private
    writable mapping it copies every page)."""
    if info.nbytes == 0 or not hasattr(mmap, "MAP_PRIVATE"):  # (no MAP_PRIVATE on Windows)
        return read_tensor(info)
    lead = info.start % mmap.ALLOCATIONGRANULARITY  # mappings start on a page boundary
    with open(info.file, "rb") as f:
        m = mmap.mmap(
            f.fileno(),
            lead + info.nbytes,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=info.start - lead,
        )
    count = info.nbytes // info.dtype.itemsize
    return torch.frombuffer(m, dtype=info.dtype, count=count, offset=lead).reshape(info.shape)


def tensor_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


class ConversionBuffer:
    """Converts each tensor to the file's dtype in one scratch buffer reused from tensor to
    tensor (a shard's ``write`` has copied the bytes into the file when it returns). Why: a
    fresh tensor per conversion costs its page faults, about a third of writing a model merged
    in float32 as bf16. One buffer serves all shards of a model: it holds the largest tensor."""

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if t.dtype == dtype:
            return t.contiguous()
        nbytes = t.numel() * dtype.itemsize
        if self._buf is None or self._buf.numel() < nbytes:
            self._buf = None  # (free the smaller one first)
            self._buf = torch.empty(nbytes, dtype=torch.uint8)
        return self._buf[:nbytes].view(dtype).view(t.shape).copy_(t)


class PlannedShard:
    """A safetensors file whose header is written up front from (name, shape, dtype) entries."""

    def __init__(
        self,
        path: Path,
        entries: list[tuple[str, tuple[int, ...], torch.dtype]],
        metadata: dict[str, str],
        convert: ConversionBuffer | None = None,
    ) -> None:
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        self.offsets: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}
        for name, shape, dtype in entries:
            nb = tensor_nbytes(shape, dtype)
            header[name] = {
                "dtype": CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nb],
            }
            self.offsets[name] = (offset, shape, dtype)
            offset += nb
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # 8-byte aligned data, as the reference writer does
        self.data_start = 8 + len(raw)
        self.path = path
        self.written: set[str] = set()
        self._convert = convert or ConversionBuffer()
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._f.truncate(self.data_start + offset)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        offset, shape, dtype = self.offsets[name]
        t = self._convert(tensor.detach().to(device="cpu"), dtype)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"tensor {name}: shape {tuple(t.shape)}, planned {shape}")
        self._f.seek(self.data_start + offset)
        if t.numel():
            self._f.write(t.reshape(-1).view(torch.uint8).numpy().data)
        self.written.add(name)

    def close(self) -> None:
        self._f.close()
