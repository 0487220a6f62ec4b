"""Reading files that anyone may have written: check everything before reading anything.

Checkpoints and adapters come from elsewhere (Hugging Face, PEFT, a colleague, a
download), so a loader treats them as untrusted input. These readers serve every
loader in minilora (GPT's ``from_pretrained``, PEFT adapters, training checkpoints,
corpus caches), and a new model's loader calls the same ones:

``read_config(path)``
    A JSON config: a regular file (not a pipe or a device: ``os.stat`` first, then
    ``open`` without blocking and ``fstat`` again), at most ``MAX_CONFIG_BYTES``,
    UTF-8, strict JSON (``NaN``/``Infinity`` refused, duplicate keys refused,
    nesting too deep a clean error), and an object ``{...}``.

``read_header(path)``
    A safetensors file's header alone: the 8-byte little-endian length ``n``
    (at most ``MAX_HEADER_BYTES`` and within the file), then ``n`` bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``.
    Every entry is checked as safetensors checks it -- a known dtype, a shape of
    ints, ``end - begin == prod(shape) * itemsize``, the tensors tiling the data
    without gap or overlap up to the file's end -- so a declared shape larger
    than the file is refused from the header alone: nothing is allocated for it.

``load_checked(path, expected, ...)``
    The header, then the names, dtypes and shapes compared with what the caller
    expects (``{name: shape}``, computed from the config and never from the file),
    and only then the data, read into arrays of exactly the checked sizes::

        state = load_checked("ckpt/model.safetensors",
                             {"wte.weight": (V, C), ...},           # every parameter and its shape
                             dtype=numpy.float32,                   # cast float widths (as transformers does)
                             buffers={"embeddings.position_ids": None},  # may be present, any dtype
                             allow_nonfinite=False)                 # NaN/inf refused unless allowed

    A parameter stored as an integer, a bool or a complex number is refused, never
    cast; BF16 (which NumPy lacks) is widened to float32 exactly. Buffers -- known
    non-parameter tensors such as BERT's integer ``position_ids`` or GPT-2's old
    causal masks -- are returned as stored, if present.

``read_folder(folder, config_name, weights_name)``
    Both files of a folder save: there, the config read, the header read, and the two
    from one save (the save id of ``minilora.io``) -- what a model's ``from_pretrained``
    calls before it computes its expected shapes. A checkpoint too large for one file
    (transformers' ``model.safetensors.index.json`` and its shards) is read the same way:
    the index checked, then every shard's header (``Shards``).

``load_model(header, layout, dtype=...)``
    The one loader of Hugging Face model files (GPT-2, LLaMA, BERT): a ``Layout`` says how
    the model names its parameters (their shapes, the base model's prefix, the buffers,
    the layer pattern); the file's naming is detected (a bare base model's file lacks the
    prefix), every name and shape checked, an unexpected layer named with the config's
    layer count, then the data read shard by shard, cast to ``dtype`` and only then checked
    finite (a bfloat16 weight of 1e5 is inf in float16). ``check_model_state`` is the same
    check for arrays already in memory (a transformers model's ``state_dict()``).

The data is read with plain ``os`` reads, never ``safetensors``' own loader: under a
memory limit that loader can fail with a Rust panic that escapes ``except Exception``.
Every failure is one of the types in ``minilora.errors``, and names the file and the
key or field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy

from minilora.errors import (ConfigError, FileAccessError, InterruptedSaveError, LoadError, MismatchError,
                             MissingFileError, NotRegularFileError, WeightsError)

SAVE_ID_KEY = "minilora_save_id"  # binds a folder save's two files, in config JSON and safetensors metadata (io.py)
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; 1 MiB leaves room and stops /dev/zero-like files
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on its header


# safetensors dtype -> (NumPy dtype, itemsize). BF16 has no NumPy dtype: read as 16-bit words and widened.
DTYPES = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1),
    "BOOL": ("?", 1), "C64": ("<c8", 8),
    "F8_E4M3": (None, 1), "F8_E5M2": (None, 1), "F8_E8M0": (None, 1),  # known, but not read (no NumPy dtype)
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


# ---------------------------------------------------------------------------
# opening: regular files only
# ---------------------------------------------------------------------------


def _open_regular(path, what: str) -> tuple:
    """``(fd, os.stat_result)`` of a regular file opened for reading, or a FileAccessError.

    ``os.stat`` first, so that a pipe or a device is never opened (opening a named pipe
    blocks until someone writes to it); then ``open`` with O_NONBLOCK and ``fstat`` on the
    descriptor, so that a file swapped for a pipe in between is caught too."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MissingFileError(f"{path} not found ({what})") from None
    except OSError as err:
        raise FileAccessError(f"{path} cannot be read ({what}): {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{path} is not a regular file ({_kind(st.st_mode)}); {what} must be one")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise FileAccessError(f"{path} cannot be read ({what}): {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFileError(f"{path} is not a regular file ({_kind(st.st_mode)}); {what} must be one")
    return fd, st


def check_regular_file(path, what: str) -> None:
    """A FileAccessError unless ``path`` is a regular file (for readers that must open it themselves)."""
    fd, _ = _open_regular(path, what)
    os.close(fd)


def read_header_of_npz_member(member, stored_bytes: int, path, name: str) -> None:
    """Check the ``.npy`` header of one member of an ``.npz``: a plain dtype, and no more data declared
    than the member holds -- so that NumPy never allocates an array the file cannot fill."""
    from numpy.lib import format as npy

    try:
        major, _ = npy.read_magic(member)
        shape, _, dtype = (npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0)(member)
    except (ValueError, OSError, EOFError) as err:
        raise WeightsError(f"{path}: member {name!r} has no valid .npy header ({err})") from None
    if dtype.hasobject:
        raise WeightsError(f"{path}: member {name!r} holds Python objects, which minilora never unpickles")
    if math.prod(shape) * dtype.itemsize > stored_bytes:
        raise WeightsError(f"{path}: member {name!r} declares shape {shape} of {dtype} "
                           f"({math.prod(shape) * dtype.itemsize} bytes) in {stored_bytes} bytes")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _read_exactly(fd: int, offset: int, n: int, path, what: str) -> bytearray:
    """``n`` bytes at ``offset``; a WeightsError if the file ends first (it shrank while being read)."""
    buf, done = bytearray(n), 0
    while done < n:
        chunk = os.pread(fd, min(n - done, 1 << 24), offset + done)  # at most 16 MiB in flight beside buf
        if not chunk:
            raise WeightsError(f"{path} is truncated: {what} needs {n} bytes at offset {offset}, the file ended after {done}")
        buf[done:done + len(chunk)] = chunk
        done += len(chunk)
    return buf


def check_sha256(file, expected: str, remedy: str) -> None:
    """Refuse a file whose sha256 is not ``expected``: a WeightsError naming the file, both digests and
    ``remedy`` (what to do about it). For files minilora ships or installs, whose content is known."""
    file = Path(file)
    if not file.is_file():
        raise MissingFileError(f"{file} is missing; {remedy}")
    st = file.stat()
    got = _sha256(str(file), st.st_size, st.st_mtime_ns)
    if got != expected:
        raise WeightsError(f"{file}: sha256 {got} differs from the expected {expected}; {remedy}")


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256, computed once per (path, size, modification time): 90 MB take ~0.2 s."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# JSON configs
# ---------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _refuse_constant(name):
    raise _Refused(f"{name} is not a number JSON allows (a config must hold finite numbers)")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(raw: bytes, path) -> object:
    """Strict JSON from bytes, every failure a ConfigError naming ``path``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except _Refused as err:
        raise ConfigError(f"{path} is not a valid config: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a config") from None
    except MemoryError:
        raise ConfigError(f"{path}: its JSON ({len(raw)} bytes) does not fit in the memory available") from None


def read_config(path, what: str = "a JSON config", max_bytes: int = MAX_CONFIG_BYTES) -> dict:
    """The JSON object in ``path``, read as described in the module docstring."""
    fd, st = _open_regular(path, what)
    try:
        if st.st_size > max_bytes:
            raise ConfigError(f"{path} is {st.st_size} bytes; {what} is at most {max_bytes} bytes")
        raw = bytearray()
        while len(raw) <= max_bytes:  # read to the end, whatever st_size said
            chunk = os.read(fd, max_bytes + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        if len(raw) > max_bytes:
            raise ConfigError(f"{path} grew past {max_bytes} bytes while being read")
    finally:
        os.close(fd)
    data = parse_json(bytes(raw), path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {json_type_name(data)}, where {what} is an object {{...}}")
    return data


def json_type_name(value) -> str:
    for types, name in ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "list"),
                        (dict, "object"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def json_matches(value, annotation: str) -> bool:
    """Does a JSON value fit a type annotation written as a string ("int", "bool | str", "list | None", ...)?

    JSON's own types only, strictly: a bool is not an int, an int is a float (JSON has
    one number type), a string is never a bool; a tuple annotation takes a JSON list."""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if part == "str" and isinstance(value, str):
            return True
        if part in ("list", "tuple", "set") and isinstance(value, list):
            return True
        if part == "dict" and isinstance(value, dict):
            return True
    return False


def compile_regex(pattern: str, path, field: str) -> re.Pattern:
    """``re.compile(pattern)``, or a ConfigError naming the file, the field and the regex's fault."""
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        raise ConfigError(f"{path}: {field}={pattern!r} is not a valid regular expression ({err})") from None


# ---------------------------------------------------------------------------
# safetensors: the header, then the data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors' name: "F32", "BF16", "I64", ...
    shape: tuple
    begin: int  # byte offsets into the data section (after the header)
    end: int


@dataclass(frozen=True)
class Header:
    path: str
    tensors: dict  # name -> TensorInfo
    metadata: dict  # "__metadata__": str -> str
    data_start: int  # 8 + header length
    identity: tuple  # (device, inode, size, mtime_ns) of the file the header was read from


@dataclass(frozen=True)
class Shards:
    """The checked headers of a checkpoint split over several files by an index
    (``model.safetensors.index.json``); ``path`` and ``tensors`` cover them all, as a Header's do."""

    path: str  # the index file
    tensors: dict  # name -> TensorInfo, over every shard
    shards: tuple  # (Header, ...), one per file, in file-name order
    metadata: dict  # {}: an index carries no save id


def read_header(path) -> Header:
    """The checked header of a safetensors file (module docstring); no tensor data is read."""
    fd, st = _open_regular(path, "a safetensors file")
    try:
        return _header_from_fd(fd, st, path)
    finally:
        os.close(fd)


def _header_from_fd(fd: int, st, path) -> Header:
    size = st.st_size
    if size < 8:
        raise WeightsError(f"{path} is corrupt or truncated: {size} bytes, shorter than safetensors' 8-byte header length")
    (n,) = struct.unpack("<Q", _read_exactly(fd, 0, 8, path, "the header length"))
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise WeightsError(f"{path} is corrupt or truncated: it declares a {n}-byte header, "
                           f"but the file has {size - 8} bytes after the length (and a header is at most {MAX_HEADER_BYTES})")
    raw = bytes(_read_exactly(fd, 8, n, path, "the header"))
    try:
        header = parse_json(raw, path)
    except ConfigError as err:
        raise WeightsError(f"{path} is corrupt or truncated: its safetensors header is not valid ({err})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is corrupt: its safetensors header is a JSON {json_type_name(header)}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WeightsError(f"{path} is corrupt: its __metadata__ must map strings to strings")
    tensors = {name: _tensor_info(name, entry, path) for name, entry in header.items()}
    data_size = size - 8 - n
    position = 0  # the tensors must tile the data section exactly, as safetensors requires
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            raise WeightsError(f"{path} is corrupt: tensor {name!r} starts at byte {info.begin} of the data, "
                               f"where the previous one ended at {position} (a gap or an overlap)")
        position = info.end
    if position != data_size:
        raise WeightsError(f"{path} is corrupt or truncated: its header describes {position} bytes of tensor data, "
                           f"the file holds {data_size}")
    return Header(str(path), tensors, metadata, 8 + n, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def _tensor_info(name: str, entry, path) -> TensorInfo:
    def bad(why):
        return WeightsError(f"{path} is corrupt: the header entry of tensor {name!r} {why}")

    if not isinstance(entry, dict):
        raise bad(f"is a JSON {json_type_name(entry)}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"has dtype {dtype!r}, not one safetensors knows ({', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 32 or not all(json_matches(d, "int") and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r}, not a list of at most 32 non-negative ints")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(json_matches(o, "int") for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise bad(f"has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * DTYPES[dtype][1]  # Python ints: a huge declared shape cannot overflow
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"declares shape {tuple(shape)} of {dtype} ({nbytes} bytes) in {offsets[1] - offsets[0]} bytes")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _is_buffer(name: str, buffers) -> bool:
    return any(name == b if isinstance(b, str) else b.fullmatch(name) is not None for b in buffers)


def check_names_and_shapes(header: Header, expected: dict, *, buffers=(), optional=(), implied: str = "the config",
                           what: str = "the model", hint=None) -> None:
    """One MismatchError listing every name and shape of ``header`` that ``expected`` does not imply.

    ``buffers``: names (str) or compiled patterns of tensors allowed besides ``expected``
    (a dict {name: shape or None} also checks a buffer's shape); ``optional``: expected
    names that may be absent; ``hint(name)``: extra words for an unexpected key."""
    buffer_shapes = buffers if isinstance(buffers, dict) else {}
    problems, missing = [], [k for k in expected if k not in header.tensors and k not in optional]
    unexpected = [k for k in header.tensors if k not in expected and not _is_buffer(k, buffers)]
    for name in unexpected[:10]:
        problems.append(f"unexpected key {name!r}{hint(name) if hint else ''}")
    if len(unexpected) > 10:
        problems.append(f"... and {len(unexpected) - 10} more unexpected keys")
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} ({implied})")
    for name, info in header.tensors.items():
        want = expected.get(name, buffer_shapes.get(name))
        if want is not None and info.shape != tuple(want):
            problems.append(f"key {name!r} has shape {info.shape}, but {implied} implies {tuple(want)}")
    if problems:
        raise MismatchError(f"{header.path} does not fit {what}:\n  " + "\n  ".join(problems))


def load_checked(path, expected: dict, *, dtype=None, buffers=(), optional=(), allow_nonfinite: bool = False,
                 header: Header | None = None, implied: str = "the config", what: str = "the model", hint=None) -> dict:
    """``{name: numpy array}`` from a safetensors file, checked before it is read (module docstring).

    expected         {name: shape} of every parameter the file must hold (computed from a config)
    dtype            None: each parameter as stored (BF16 widened to float32); a float dtype: cast to it
    buffers          names or compiled regexes of non-parameter tensors that may be present (any dtype,
                     returned as stored); a dict {name: shape or None} also checks their shapes
    optional         names of ``expected`` that may be absent (e.g. a tied ``lm_head.weight``)
    allow_nonfinite  False: a parameter holding NaN or inf is refused (a WeightsError naming it)
    header           a header from ``read_header(path)``, if the caller has one (the file must be unchanged)
    implied, what, hint   words for the mismatch message (see ``check_names_and_shapes``)
    """
    if dtype is not None and numpy.dtype(dtype).kind != "f":
        raise TypeError(f"load_checked: dtype must be a float dtype, got {numpy.dtype(dtype)}")
    fd, st = _open_regular(path, "a safetensors file")
    try:
        found = _header_from_fd(fd, st, path)
        if header is not None and header.identity != found.identity:
            raise WeightsError(f"{path} changed between reading its header and its data; load it again")
        check_names_and_shapes(found, expected, buffers=buffers, optional=optional, implied=implied, what=what, hint=hint)
        for name, info in found.tensors.items():
            if name in expected and info.dtype not in FLOAT_DTYPES:
                raise WeightsError(
                    f"{path}: tensor {name!r} is stored as {info.dtype}; a parameter must be a float "
                    f"({', '.join(FLOAT_DTYPES)}) -- minilora does not cast integers, booleans or complex numbers")
            if DTYPES[info.dtype][0] is None:
                raise WeightsError(f"{path}: tensor {name!r} is stored as {info.dtype}, which NumPy cannot read")
        out = {}
        for name, info in found.tensors.items():
            raw = _read_exactly(fd, found.data_start + info.begin, info.end - info.begin, path, f"tensor {name!r}")
            array = numpy.frombuffer(raw, dtype=DTYPES[info.dtype][0]).reshape(info.shape)
            if info.dtype == "BF16":  # the top 16 bits of a float32: widening is exact
                array = (array.astype(numpy.uint32) << 16).view(numpy.float32)
            if name not in expected:  # a buffer: as stored
                out[name] = array
                continue
            with numpy.errstate(over="ignore"):  # a value too large for `dtype` becomes inf, refused below
                array = array.astype(dtype if dtype is not None else array.dtype.newbyteorder("="), copy=False)
            if not allow_nonfinite:
                bad = int(array.size - numpy.count_nonzero(numpy.isfinite(array)))
                if bad:
                    cast = f" (after the cast to {numpy.dtype(dtype)})" if dtype is not None else ""
                    raise WeightsError(f"{path}: tensor {name!r} holds {bad} non-finite values (NaN or inf){cast}; "
                                       "pass allow_nonfinite=True to load it anyway")
            out[name] = array
        return out
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# a folder: a config and its weights, from the same save
# ---------------------------------------------------------------------------


def read_folder(folder, config_name: str, weights_name: str, what: str = "a checkpoint folder") -> tuple:
    """``(config dict, Header)`` of a folder holding a JSON config and safetensors weights.

    Both files must be there; the config is read with ``read_config``, the weights'
    header with ``read_header`` (no data yet), and the two must come from one save
    (``check_same_save``). The caller then compares its expected shapes and reads the
    data with ``load_checked(folder / weights_name, expected, header=header)``::

        config, header = read_folder(path, "config.json", "model.safetensors")
        expected = shapes_from(config)                  # the model's own rule
        state = load_checked(Path(path) / "model.safetensors", expected, header=header)
    """
    folder = Path(folder)
    config_path, weights_path = folder / config_name, folder / weights_name
    holds = f"{what} holds {config_name} and {weights_name}"
    if not folder.is_dir():
        raise MissingFileError(f"{folder} is not a folder ({holds})")
    if not os.path.lexists(config_path):
        hint = ""
        try:
            if SAVE_ID_KEY in read_header(weights_path).metadata:
                hint = f"; {weights_name} is there, from a minilora save that was interrupted before writing {config_name}"
        except (LoadError, OSError):
            pass
        raise MissingFileError(f"{config_path} not found ({holds}){hint}")
    index_path = folder / (weights_name + INDEX_SUFFIX)
    if not os.path.lexists(weights_path) and not os.path.lexists(index_path):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        note = (f" (found {', '.join(pickled)}: minilora reads only safetensors -- pickle files can run code)"
                if pickled else "")
        raise MissingFileError(f"{weights_path} not found{note}, nor {index_path.name} (a sharded checkpoint's index)")
    config = read_config(config_path, f"the {config_name} of {what}")
    header = read_header(weights_path) if os.path.lexists(weights_path) else read_shards(index_path)
    for one in getattr(header, "shards", (header,)):
        check_same_save(config, config_path, one)
    return config, header


INDEX_SUFFIX = ".index.json"  # model.safetensors.index.json: transformers' list of a sharded checkpoint's files


def read_shards(index_path) -> Shards:
    """The index of a sharded checkpoint and every shard's header, checked: the index is strict JSON
    with a ``weight_map`` {tensor name: file name}, each file a plain name beside the index; each
    shard's header is checked as ``read_header`` checks one, and holds exactly the tensors the index
    maps to it (none missing, none extra, none in two shards). No tensor data is read."""
    index_path = Path(index_path)
    index = read_config(index_path, "a safetensors index", max_bytes=MAX_HEADER_BYTES)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError(f"{index_path}: weight_map must be a non-empty object {{tensor name: file name}}, "
                          f"got a JSON {json_type_name(weight_map)}")
    files = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file or file in (".", "..") or not file.endswith(".safetensors"):
            raise ConfigError(f"{index_path}: weight_map[{name!r}] = {file!r} is not the name of a .safetensors file "
                              f"beside the index")
        files.setdefault(file, set()).add(name)
    headers, tensors = [], {}
    for file in sorted(files):
        if not os.path.lexists(index_path.parent / file):
            raise MissingFileError(f"{index_path}: weight_map names {file}, which is not in {index_path.parent}")
        header = read_header(index_path.parent / file)
        held = set(header.tensors)
        for names, problem in ((files[file] - held, f"the index maps to {file}, which does not hold"),
                               (held - files[file], f"{file} holds, which the index does not map to it")):
            if names:
                raise MismatchError(f"{index_path}: tensors {problem}: {', '.join(sorted(names)[:6])}"
                                    f"{' ...' if len(names) > 6 else ''}")
        headers.append(header)
        tensors.update(header.tensors)
    return Shards(str(index_path), tensors, tuple(headers), {})


def load_weights(header, expected: dict, **kwargs) -> dict:
    """``load_checked`` over one file's Header or a sharded checkpoint's Shards: for shards, every name
    and shape is checked against ``expected`` first (one message for all), then each shard is read
    in turn, checked as one file is."""
    if isinstance(header, Header):
        return load_checked(header.path, expected, header=header, **kwargs)
    names = {k: kwargs[k] for k in ("buffers", "optional", "implied", "what", "hint") if k in kwargs}
    check_names_and_shapes(header, expected, **names)
    out = {}
    for shard in header.shards:
        part = {k: v for k, v in expected.items() if k in shard.tensors}
        out.update(load_checked(shard.path, part, header=shard, **{**kwargs, "optional": set(part)}))
    return out



def check_same_save(config: dict, config_path, header: Header) -> None:
    """Refuse a config and a weights file written by two different saves (see ``minilora.io``).

    A save writes one id into both files and renames the weights into place first,
    the config second. So a kill between the two renames leaves weights whose id the
    config does not carry: refused. Weights without an id were not written by a
    minilora save (PEFT, transformers, or rewritten by hand with safetensors): accepted,
    whatever the config says."""
    ours, theirs = config.get(SAVE_ID_KEY), header.metadata.get(SAVE_ID_KEY)
    if ours is not None and not isinstance(ours, str):
        raise ConfigError(f"{config_path}: {SAVE_ID_KEY} must be a string, got a JSON {json_type_name(ours)}")
    if theirs is None or ours == theirs:
        return
    folder = os.path.dirname(os.path.abspath(header.path))
    raise InterruptedSaveError(
        f"{folder} holds files from two different saves: {os.path.basename(header.path)} has save id {theirs!r}, "
        f"{os.path.basename(str(config_path))} has {ours!r}. A save into this folder was interrupted between writing "
        f"its two files; save again (or restore the folder from a copy). If you replaced "
        f"{os.path.basename(str(config_path))} on purpose, set its {SAVE_ID_KEY} to {theirs!r}")


# ---------------------------------------------------------------------------
# one loader for every Hugging Face model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a model names its parameters in Hugging Face's files and state dicts (what ``load_model``
    and ``check_model_state`` need). Patterns are written without the base model's prefix."""

    shapes: dict  # {key: shape} of every parameter, named as the model with its head saves it
    prefix: str  # the base model's prefix ("transformer.", "model.", "bert."), absent from a bare base model's keys
    source: str  # the config the shapes come from ("path/config.json"), for messages
    implied: str  # its fields that set the shapes, for messages: "config.json (n_embd=16, n_layer=2, ...)"
    what: str  # the model, for messages: "minilora's GPT"
    optional: frozenset = frozenset()  # keys that may be absent (a tied head, BERT's pooler)
    buffers: str = ""  # regex of the tensors that are no parameters (old causal masks, position ids): dropped
    layer: str = ""  # regex whose group 1 is a layer index, e.g. r"h\.(\d+)\."
    layers: tuple = ("", 0)  # the config's layer-count field and its value, e.g. ("n_layer", 12)

    def naming(self, names) -> dict:
        """``check_names_and_shapes``' keywords for a file (or state dict) holding ``names``, in its own
        naming -- with the prefix, or without it if no name has it -- and ``ours``: its key -> ours."""
        bare = bool(self.prefix) and not any(n.startswith(self.prefix) for n in names)
        prefix = re.escape(self.prefix)
        inner = (lambda key: key.removeprefix(self.prefix)) if bare else (lambda key: key)
        field, count = self.layers

        def hint(key):  # an unexpected layer: the config's count is the likely cause
            layer = re.match(rf"(?:{prefix})?{self.layer}", key) if self.layer else None
            return f": {self.source} says {field}={count}" if layer and int(layer[1]) >= count else ""

        return dict(expected={inner(k): v for k, v in self.shapes.items()},
                    optional={inner(k) for k in self.optional},
                    buffers=[re.compile(rf"(?:{prefix})?(?:{self.buffers})")] if self.buffers else [],
                    implied=self.implied, what=self.what, hint=hint,
                    ours={inner(k): k for k in self.shapes})


def check_layer_count(header, count: int, field: str, per_layer: int, what: str, source: str) -> None:
    """Refuse a config whose layer count the file cannot hold (a billion, say) before the key list
    of so many layers is built."""
    if count > len(header.tensors):
        raise MismatchError(f"{header.path} does not fit {what}: {source} says {field}={count}, "
                            f"but the file holds {len(header.tensors)} tensors ({per_layer} a layer)")


def load_model(header, layout: Layout, *, dtype=None, allow_nonfinite: bool = False) -> dict:
    """``{key: array}`` of a model's parameters from its file (a Header, or Shards), keyed as
    ``layout.shapes``: the file's naming detected, every name and shape checked, buffers dropped,
    the data read (shard by shard), cast to ``dtype`` and then checked finite (module docstring)."""
    naming = layout.naming(header.tensors)
    ours = naming.pop("ours")
    tensors = load_weights(header, naming.pop("expected"), **naming, dtype=dtype, allow_nonfinite=allow_nonfinite)
    return {ours[k]: v for k, v in tensors.items() if k in ours}


def check_model_state(tensors: dict, layout: Layout, source: str) -> dict:
    """``load_model``'s checks for arrays in memory (``{name: array}``, e.g. a transformers model's
    state dict), named ``source`` in messages; returns them keyed as ``layout.shapes``."""
    infos = {k: TensorInfo("", tuple(v.shape), 0, 0) for k, v in tensors.items()}
    naming = layout.naming(infos)
    ours = naming.pop("ours")
    check_names_and_shapes(Header(source, infos, {}, 0, ()), naming.pop("expected"), **naming)
    return {ours[k]: v for k, v in tensors.items() if k in ours}
