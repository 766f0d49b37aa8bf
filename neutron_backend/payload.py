"""The two delegate payload formats, written and read.

*Emulation* payload (ours, runs on the host through LiteRT)::

    b"NTRNEMU\\0"                      8-byte magic
    u32 format version                 EMULATION_VERSION
    u32 n + n bytes                    UTF-8 JSON: {"target", "inputs": [TensorSpec...], "outputs": [...]}
    u32 m + m bytes                    the Neutron IR (int8 TFLite flatbuffer)
    u32 CRC32                          of every byte before it

All integers are little-endian.

*Deployable* payload (NXP's device runtime layout): 16-byte-aligned sections header, microcode, weights,
kernels. The header holds, one byte each: number of Neutron inputs, number of Neutron outputs, number of model
(delegate) inputs; a format per input then per output (1 = channels-last, 0 = none); a map per input then per
output (index of the delegate argument / output); the payload version; zero padding to 16 bytes.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass

EMULATION_MAGIC = b"NTRNEMU\x00"
EMULATION_VERSION = 1

_U32 = struct.Struct("<I")
_TENSOR_DTYPES = ("int8", "int32", "float32")

_ALIGNMENT = 16
_MAX_IO = 255
_CHANNELS_LAST = 1
_NO_FORMAT = 0

# The Neutron microcode header, as NXP's device runtime reads it (little-endian u32 words): word 0 is a magic
# word, words 6 and 7 the microcode and weights sizes, and the input/output counts sit at words that depend on
# the payload version. The runtime finds the weights and kernels sections from these sizes.
_MICROCODE_MAGIC = 0x64434D6E
_MICROCODE_SIZE_WORD = 6
_WEIGHTS_SIZE_WORD = 7
_IO_COUNT_WORDS = {0: (11, 12), 1: (13, 14)}

# Version 1 is what NXP's backend writes for converters whose NeutronGraph node has profile and debug outputs
# (the current SDKs); version 0 is for older converters. The runtime rejects anything else.
DEPLOYABLE_VERSION = 1


class PayloadError(ValueError):
    """A payload (or its description) is malformed: truncated, corrupted, or with out-of-range fields."""


def _align(size: int) -> int:
    return (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


def _pad(data: bytes) -> bytes:
    return data + bytes(_align(len(data)) - len(data))


@dataclass(frozen=True)
class TensorSpec:
    """One delegate input or output as ExecuTorch sees it.

    ``shape`` is the ExecuTorch-side shape (e.g. NCHW). ``channels_last`` means the runtime permutes
    channels-first to channels-last before feeding the TFLite input (or back for an output), because the
    TRANSPOSE was not put inside the IR. ``arg_index`` is the index of the delegate argument (inputs) or of
    the delegate output (outputs).
    """

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    channels_last: bool
    arg_index: int

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple) or not all(_is_int(d) and d >= 0 for d in self.shape):
            raise PayloadError(f"tensor spec: shape {self.shape!r} must be a tuple of non-negative integers")
        if self.dtype not in _TENSOR_DTYPES:
            raise PayloadError(f"tensor spec: dtype {self.dtype!r} is not supported; valid: {_TENSOR_DTYPES}")
        if (
            not isinstance(self.scale, int | float)
            or isinstance(self.scale, bool)
            or not (math.isfinite(self.scale) and self.scale > 0)
        ):
            raise PayloadError(f"tensor spec: scale {self.scale!r} must be finite and > 0")
        if not _is_int(self.zero_point):
            raise PayloadError(f"tensor spec: zero_point {self.zero_point!r} must be an integer")
        if not isinstance(self.channels_last, bool):
            raise PayloadError(f"tensor spec: channels_last {self.channels_last!r} must be a bool")
        if self.channels_last and len(self.shape) not in (3, 4, 5):
            raise PayloadError(f"tensor spec: channels_last needs rank 3, 4 or 5, shape is {self.shape}")
        if not _is_int(self.arg_index) or self.arg_index < 0:
            raise PayloadError(f"tensor spec: arg_index {self.arg_index!r} must be a non-negative integer")

    @classmethod
    def from_json(cls, obj: object) -> TensorSpec:
        """Returns the spec described by a JSON object as written by :meth:`EmulationPayload.to_bytes`."""
        fields = ("shape", "dtype", "scale", "zero_point", "channels_last", "arg_index")
        if not isinstance(obj, dict) or set(obj) != set(fields):
            raise PayloadError(f"tensor spec: expected an object with keys {fields}, got {obj!r}")
        if not isinstance(obj["shape"], list):
            raise PayloadError(f"tensor spec: shape {obj['shape']!r} must be a list")
        return cls(**{**obj, "shape": tuple(obj["shape"])})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class EmulationPayload:
    """An emulation payload: the I/O description and the Neutron IR, run on the host by LiteRT."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tflite: bytes
    target: str

    def __post_init__(self) -> None:
        if not isinstance(self.tflite, bytes) or self.tflite[4:8] != b"TFL3":
            raise PayloadError("emulation payload: tflite is not a TFLite flatbuffer (no 'TFL3' identifier)")
        if not isinstance(self.target, str) or not self.target:
            raise PayloadError(f"emulation payload: target {self.target!r} must be a non-empty string")
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not isinstance(specs, tuple) or not all(isinstance(s, TensorSpec) for s in specs):
                raise PayloadError(f"emulation payload: {kind} must be a tuple of TensorSpec")

    def to_bytes(self) -> bytes:
        """Returns the serialized payload (magic, version, JSON description, TFLite, CRC32)."""
        description = json.dumps(
            {
                "target": self.target,
                "inputs": [asdict(spec) for spec in self.inputs],
                "outputs": [asdict(spec) for spec in self.outputs],
            },
            separators=(",", ":"),
        ).encode("utf-8")
        body = b"".join(
            (
                EMULATION_MAGIC,
                _U32.pack(EMULATION_VERSION),
                _U32.pack(len(description)),
                description,
                _U32.pack(len(self.tflite)),
                self.tflite,
            )
        )
        return body + _U32.pack(zlib.crc32(body))


@dataclass(frozen=True)
class DeployablePayload:
    """A deployable payload in NXP's device-runtime layout.

    ``input_formats``/``output_formats`` hold 1 (channels-last) or 0 (none) per Neutron input/output;
    ``input_map``/``output_map`` the index of the delegate argument/output per Neutron input/output.
    ``version`` is the payload version byte (see ``DEPLOYABLE_VERSION``); it selects where the device runtime
    reads the I/O counts in the microcode header.
    """

    input_formats: tuple[int, ...]
    output_formats: tuple[int, ...]
    input_map: tuple[int, ...]
    output_map: tuple[int, ...]
    num_model_inputs: int
    microcode: bytes
    weights: bytes
    kernels: bytes
    version: int = DEPLOYABLE_VERSION

    def __post_init__(self) -> None:
        if self.version not in _IO_COUNT_WORDS:
            raise PayloadError(
                f"deployable payload: version {self.version!r} is not supported; "
                f"valid: {sorted(_IO_COUNT_WORDS)}"
            )
        if not _is_int(self.num_model_inputs) or not 0 <= self.num_model_inputs <= _MAX_IO:
            raise PayloadError(
                f"deployable payload: num_model_inputs {self.num_model_inputs!r} must be in [0, {_MAX_IO}]"
            )
        for kind, formats, mapping in (
            ("input", self.input_formats, self.input_map),
            ("output", self.output_formats, self.output_map),
        ):
            if len(formats) > _MAX_IO:
                raise PayloadError(
                    f"deployable payload: {len(formats)} Neutron {kind}s, at most {_MAX_IO} allowed"
                )
            if len(mapping) != len(formats):
                raise PayloadError(
                    f"deployable payload: {len(formats)} {kind} formats but {len(mapping)} {kind} map entries"
                )
            if any(f not in (_NO_FORMAT, _CHANNELS_LAST) for f in formats):
                raise PayloadError(
                    f"deployable payload: {kind} formats {formats} must be 0 (none) or 1 (channels-last)"
                )
            if not all(_is_int(m) and 0 <= m <= _MAX_IO for m in mapping):
                raise PayloadError(
                    f"deployable payload: {kind} map {mapping} must be bytes in [0, {_MAX_IO}]"
                )
        if any(m >= self.num_model_inputs for m in self.input_map):
            raise PayloadError(
                f"deployable payload: input map {self.input_map} points past the "
                f"{self.num_model_inputs} model inputs"
            )
        for name in ("microcode", "weights", "kernels"):
            if not isinstance(getattr(self, name), bytes):
                raise PayloadError(f"deployable payload: {name} must be bytes")
        self._check_microcode()

    def _check_microcode(self) -> None:
        """Check the microcode header as the device runtime reads it, so a written payload can be read."""
        io_words = _IO_COUNT_WORDS[self.version]
        if len(self.microcode) < 4 * (max(io_words) + 1):
            raise PayloadError(f"deployable payload: microcode of {len(self.microcode)} bytes is too short")
        words = struct.unpack_from(f"<{max(io_words) + 1}I", self.microcode)
        if words[0] != _MICROCODE_MAGIC:
            raise PayloadError(
                f"deployable payload: microcode magic word {words[0]:#010x}, "
                f"expected {_MICROCODE_MAGIC:#010x}"
            )
        for name, word, section in (
            ("microcode", _MICROCODE_SIZE_WORD, self.microcode),
            ("weights", _WEIGHTS_SIZE_WORD, self.weights),
        ):
            # The runtime locates the next section at the aligned size from the header.
            if _align(words[word]) != _align(len(section)):
                raise PayloadError(
                    f"deployable payload: microcode header gives {name} size {words[word]}, "
                    f"but the {name} section has {len(section)} bytes"
                )
        counts = (words[io_words[0]], words[io_words[1]])
        if counts != (len(self.input_formats), len(self.output_formats)):
            raise PayloadError(
                f"deployable payload: microcode expects {counts[0]} inputs and {counts[1]} outputs, "
                f"header has {len(self.input_formats)} and {len(self.output_formats)}"
            )

    def to_bytes(self) -> bytes:
        """Returns the payload bytes: header, microcode, weights, kernels, each zero-padded to 16 bytes."""
        header = bytes(
            (
                len(self.input_formats),
                len(self.output_formats),
                self.num_model_inputs,
                *self.input_formats,
                *self.output_formats,
                *self.input_map,
                *self.output_map,
                self.version,
            )
        )
        return b"".join(_pad(section) for section in (header, self.microcode, self.weights, self.kernels))


def is_emulation_payload(data: bytes) -> bool:
    """Returns True when ``data`` starts with the emulation payload magic."""
    return bytes(data[: len(EMULATION_MAGIC)]) == EMULATION_MAGIC


def read_payload(data: bytes) -> EmulationPayload | DeployablePayload:
    """Parse a delegate payload of either kind.

    For a deployable payload, the microcode and weights are cut to the sizes in the microcode header (as the
    device runtime does); the kernels section, whose size nothing records, is everything after the weights,
    including its zero padding. So ``read_payload(p.to_bytes()).to_bytes() == p.to_bytes()``.

    Returns an EmulationPayload or a DeployablePayload.
    Raises PayloadError for anything malformed.
    """
    data = bytes(data)
    if not data:
        raise PayloadError("empty payload")
    if is_emulation_payload(data) or (len(data) < len(EMULATION_MAGIC) and EMULATION_MAGIC.startswith(data)):
        return _read_emulation(data)
    return _read_deployable(data)


def _read_emulation(data: bytes) -> EmulationPayload:
    """Returns the emulation payload in ``data`` (which starts with, or is a prefix of, the magic)."""
    pos = len(EMULATION_MAGIC)

    def u32(what: str) -> int:
        nonlocal pos
        if pos + _U32.size > len(data):
            raise PayloadError(f"truncated emulation payload: {len(data)} bytes, ends inside the {what}")
        (value,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        return value

    def chunk(what: str) -> bytes:
        nonlocal pos
        size = u32(f"{what} length")
        if pos + size > len(data):
            raise PayloadError(
                f"truncated emulation payload: {what} of {size} bytes at offset {pos} runs past the end "
                f"({len(data)} bytes)"
            )
        pos += size
        return data[pos - size : pos]

    version = u32("format version")
    if version != EMULATION_VERSION:
        raise PayloadError(
            f"emulation payload version {version} is not supported (expected {EMULATION_VERSION})"
        )
    description = chunk("I/O description")
    tflite = chunk("TFLite model")
    crc = u32("CRC32")
    if pos != len(data):
        raise PayloadError(f"emulation payload has {len(data) - pos} unexpected trailing bytes")
    actual = zlib.crc32(data[: pos - _U32.size])
    if crc != actual:
        raise PayloadError(f"corrupted emulation payload: CRC32 {actual:#010x}, recorded {crc:#010x}")

    try:
        obj = json.loads(description.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"emulation payload: I/O description is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict) or set(obj) != {"target", "inputs", "outputs"}:
        raise PayloadError("emulation payload: I/O description needs exactly 'target', 'inputs', 'outputs'")
    if not isinstance(obj["inputs"], list) or not isinstance(obj["outputs"], list):
        raise PayloadError("emulation payload: 'inputs' and 'outputs' must be lists")
    return EmulationPayload(
        inputs=tuple(TensorSpec.from_json(spec) for spec in obj["inputs"]),
        outputs=tuple(TensorSpec.from_json(spec) for spec in obj["outputs"]),
        tflite=tflite,
        target=obj["target"],
    )


def _read_deployable(data: bytes) -> DeployablePayload:
    """Returns the deployable payload in ``data``."""
    if len(data) % _ALIGNMENT:
        raise PayloadError(
            f"not a payload: {len(data)} bytes is neither an emulation payload (no magic) nor a deployable "
            f"payload (size not a multiple of {_ALIGNMENT})"
        )
    n_in, n_out, n_model = data[0], data[1], data[2]
    header_size = 3 + 2 * (n_in + n_out) + 1
    sections_at = _align(header_size)
    if sections_at >= len(data):
        raise PayloadError(
            f"truncated deployable payload: header for {n_in} inputs and {n_out} outputs needs "
            f"{sections_at} bytes plus sections, payload has {len(data)}"
        )
    if any(data[header_size:sections_at]):
        raise PayloadError("deployable payload: header padding is not zero")
    fields = data[3:header_size]
    input_formats, output_formats = tuple(fields[:n_in]), tuple(fields[n_in : n_in + n_out])
    input_map = tuple(fields[n_in + n_out : 2 * n_in + n_out])
    output_map = tuple(fields[2 * n_in + n_out : 2 * (n_in + n_out)])
    version = fields[-1]
    if version not in _IO_COUNT_WORDS:
        raise PayloadError(
            f"deployable payload version {version} is not supported; valid: {sorted(_IO_COUNT_WORDS)}"
        )

    sections = data[sections_at:]
    words_needed = max(_MICROCODE_SIZE_WORD, _WEIGHTS_SIZE_WORD) + 1
    if len(sections) < 4 * words_needed:
        raise PayloadError(f"truncated deployable payload: {len(sections)} bytes of sections")
    (magic,) = _U32.unpack_from(sections, 0)
    if magic != _MICROCODE_MAGIC:
        raise PayloadError(
            f"not a payload: no emulation magic, and no Neutron microcode magic ({_MICROCODE_MAGIC:#010x}) "
            f"after a deployable header (found {magic:#010x})"
        )
    microcode_size, weights_size = struct.unpack_from("<2I", sections, 4 * _MICROCODE_SIZE_WORD)
    weights_at = _align(microcode_size)
    kernels_at = weights_at + _align(weights_size)
    if kernels_at > len(sections):
        raise PayloadError(
            f"truncated deployable payload: microcode ({microcode_size} bytes) and weights "
            f"({weights_size} bytes) run past the {len(sections)} bytes of sections"
        )
    return DeployablePayload(
        input_formats=input_formats,
        output_formats=output_formats,
        input_map=input_map,
        output_map=output_map,
        num_model_inputs=n_model,
        microcode=sections[:microcode_size],
        weights=sections[weights_at : weights_at + weights_size],
        kernels=sections[kernels_at:],
        version=version,
    )
