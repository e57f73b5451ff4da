"""Reading and writing files: safe loading, atomic saving, and the format and version every file carries.

Every file pqprune writes goes through :func:`atomic_write` (temp file in the same folder, fsync, rename), so a
crash or Ctrl-C leaves either the old file or the new one, never half of one, and is written and read through
its :class:`FileFormat`, which names the format and version in the file and checks them on read. Pickled files
are loaded with ``torch.load(weights_only=True)`` only: a file that needs arbitrary code to unpickle is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor


class FileFormatError(ValueError):
    """A file is missing, unreadable, corrupt or of the wrong kind; the message names the file."""


class MissingFileError(FileFormatError, FileNotFoundError):
    """A file that is not there: a :class:`FileFormatError` like every bad input file, and a
    ``FileNotFoundError`` (``errno``, ``filename`` set) for code that catches the built-in one."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(f"{path}: no such file")
        self.errno, self.strerror, self.filename = errno.ENOENT, "no such file", str(path)

    def __str__(self) -> str:
        return str(self.args[0])


MISSING = "–"
"""How every printed table shows a value that does not exist (None or NaN: the pruned accuracy of round 0, the PQI
of a degenerate unit)."""


def finite_or_none(x: Any) -> Any:
    """A number as JSON and SQL can hold it: a NaN or infinite float (or 0-d tensor / NumPy scalar) becomes None
    (an undefined statistic, e.g. the PQ Index of a unit with no survivors); anything else is returned as is,
    numbers as plain Python numbers."""
    if isinstance(x, Tensor) and x.numel() == 1:
        x = x.item()
    elif hasattr(x, "item") and getattr(x, "shape", None) == ():
        x = x.item()  # a NumPy scalar
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite number replaced by None (mappings, lists and tuples walked; keys as str)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return finite_or_none(obj)


def to_json(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """JSON text of ``obj`` with every non-finite number as null (:func:`json_safe`): what pqprune writes or prints
    as JSON is always valid JSON (``NaN`` and ``Infinity`` are not)."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions a plain ``open(path, "w")`` would have: ``0o666`` less the umask."""
    os.chmod(path, 0o666 & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on leaving the block it is fsynced and renamed over ``path``, or
    removed if the block raised (a crash leaves the old file or the new one, never half of one).

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), not the
    private ``0o600`` of a temporary file, so a results folder shared on a cluster stays readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        follow_umask(tmp)  # after writing: a writer may replace the file (safetensors does, as 0600)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, fsync it, then rename it over ``path``
    (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_tensors(
    tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors as safetensors, atomically. Tensors are made contiguous and moved to the CPU. pqprune's own
    files are written by :meth:`FileFormat.save_tensors`, which names their format in ``metadata``."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=meta))


def save_json(obj: object, path: str | os.PathLike) -> Path:
    """Write JSON atomically (:func:`to_json`: sorted keys and indented, so files diff well; non-finite numbers as
    null). pqprune's own documents are written by :meth:`FileFormat.save_json`, which names their format."""
    text = to_json(obj, sort_keys=True)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (empty dict when it has none)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise FileFormatError(f"{path}: not a readable safetensors file ({err})") from err


# --------------------------------------------------------------------------------------------- formats
# Every file pqprune writes names its format and version the same way: keys "format" and "format_version" in a
# safetensors file's metadata or at the top of a JSON document. Each format is declared once, as a FileFormat
# beside the code that writes it, and every read and write goes through that object; FORMATS lists them all
# (the CHANGELOG's table of on-disk formats is checked against it).


class NewerFormatError(FileFormatError):
    """A file was written by a newer pqprune, in a format version this one cannot read."""


FORMATS: dict[str, FileFormat] = {}


@dataclass(frozen=True)
class FileFormat:
    """One on-disk format: its ``name`` and ``version`` (the one written, and the newest read), and ``what`` the
    file is, for error messages ("mask file", "round checkpoint", …).

    pqprune 0.1.0 wrote some files without a version: ``legacy`` is the version such a file is read as (None: this
    format always carried one, so a file without it is refused). ``legacy_unnamed``: 0.1.0 wrote these files
    without a format name either (run settings, the pruner's state), so a missing name is read as this format.
    """

    name: str
    version: int
    what: str
    legacy: int | None = None
    legacy_unnamed: bool = False

    def __post_init__(self) -> None:
        known = FORMATS.setdefault(self.name, self)
        if known != self:
            raise ValueError(f"file format {self.name!r} is declared twice, differently: {known} and {self}")

    def tag(self) -> dict[str, Any]:
        """The keys naming this format and version at the top of a document (JSON, or a state dict)."""
        return {"format": self.name, "format_version": self.version}

    def stamp(self) -> dict[str, str]:
        """The metadata naming this format and version (strings, as safetensors metadata must be)."""
        return {k: str(v) for k, v in self.tag().items()}

    def check(self, header: Mapping[str, Any], path: str | os.PathLike) -> int:
        """The version of the file at ``path`` whose ``header`` (safetensors metadata or JSON document) is given.

        Raises:
            FileFormatError: naming ``path``: another format, or an unreadable or missing version.
            NewerFormatError: naming ``path`` and both versions: written by a newer pqprune.
        """
        found = header.get("format")
        if found is None and self.legacy_unnamed:
            found = self.name
        if found != self.name:
            raise FileFormatError(f"{path}: not a pqprune {self.what} (format={found!r}, expected {self.name!r})")
        raw = header.get("format_version", header.get("version"))  # 0.1.0's round records and pruner states
        if raw is None:
            if self.legacy is None:
                raise FileFormatError(f"{path}: {self.what} without a format version")
            return self.legacy
        try:
            version = int(raw)
        except (TypeError, ValueError):
            raise FileFormatError(f"{path}: bad {self.what} format version {raw!r}") from None
        if version > self.version:
            raise NewerFormatError(
                f"{path}: {self.what} format version {version} is newer than this pqprune reads ({self.version}); "
                "upgrade pqprune to read it"
            )
        return version

    def save_tensors(
        self, tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
    ) -> Path:
        """Write ``tensors`` as a safetensors file of this format, atomically (``metadata``: further entries)."""
        return save_tensors(tensors, path, {**(metadata or {}), **self.stamp()})

    def load_tensors(self, path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The tensors and metadata of a safetensors file of this format, checked by :meth:`check` first.

        Raises:
            FileFormatError: the file is missing, not safetensors, or of another (or newer) format.
        """
        meta = read_safetensors_metadata(path)
        self.check(meta, path)
        return load_state_dict(path), meta

    def save_json(self, doc: Mapping[str, Any], path: str | os.PathLike) -> Path:
        """Write ``doc`` with this format's name and version as JSON, atomically (non-finite numbers as null)."""
        return save_json({**doc, **self.tag()}, path)

    def read_json(self, path: str | os.PathLike) -> dict[str, Any]:
        """A JSON document of this format (an object), checked by :meth:`check`.

        Raises:
            FileFormatError: the file is missing, not JSON, not an object, or of another (or newer) format.
        """
        path = _existing(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise FileFormatError(f"{path}: unreadable {self.what} ({err})") from err
        if not isinstance(doc, dict):
            raise FileFormatError(f"{path}: not a pqprune {self.what} (a JSON {type(doc).__name__}, not an object)")
        self.check(doc, path)
        return doc


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict (name → tensor) from ``.safetensors`` or a ``.pt``/``.pth`` pickle.

    Pickles are read with ``weights_only=True``; one that needs arbitrary code is refused. A checkpoint dict
    holding the state dict under ``"state_dict"`` or ``"model"`` is unwrapped. Errors name the file.
    """
    path = _existing(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise FileFormatError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise FileFormatError(
            f"{path}: refused, it needs arbitrary code to unpickle (only plain tensors are loaded, "
            f"weights_only=True); save a state dict instead: torch.save(model.state_dict(), path)"
        ) from err
    except Exception as err:  # torch raises many types (struct.error, RuntimeError, EOFError) on junk
        raise FileFormatError(f"{path}: not a readable PyTorch file ({err})") from err
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise FileFormatError(f"{path}: holds no state dict (a mapping of names to tensors)")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: not a file")
    return path
