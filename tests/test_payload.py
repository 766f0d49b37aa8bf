"""Both payload formats: round trips, byte layout, and rejection of malformed data."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from neutron_backend.ir import IRBuilder
from neutron_backend.payload import (
    EMULATION_MAGIC,
    DeployablePayload,
    EmulationPayload,
    PayloadError,
    TensorSpec,
    is_emulation_payload,
    read_payload,
)

# From NXP's device runtime: microcode magic word, size words 6 (microcode) and 7 (weights), and for payload
# version 1 the Neutron input/output counts at words 13 and 14.
MICROCODE_MAGIC = 0x64434D6E


def tiny_tflite() -> bytes:
    ir = IRBuilder("payload test")
    x = ir.add_tensor("x", (1, 2, 2, 2), "int8", scale=0.1, zero_point=0)
    out = ir.add_tensor("out", (1, 8), "int8", scale=0.1, zero_point=0)
    ir.add_operator("RESHAPE", [x, ir.add_constant("shape", np.array([1, 8], np.int32))], [out])
    ir.set_inputs([x])
    ir.set_outputs([out])
    return ir.finish()


def emulation_payload() -> EmulationPayload:
    return EmulationPayload(
        inputs=(TensorSpec((1, 2, 2, 2), "int8", 0.1, 0, True, 0),),
        outputs=(TensorSpec((1, 8), "int8", 0.1, -3, False, 0),),
        tflite=tiny_tflite(),
        target="imxrt700",
    )


def fake_microcode(size: int, weights_size: int, n_in: int, n_out: int) -> bytes:
    words = [0] * 16
    words[0] = MICROCODE_MAGIC
    words[6], words[7] = size, weights_size
    words[13], words[14] = n_in, n_out
    head = struct.pack("<16I", *words)
    return head + bytes((i * 7 + 1) % 256 for i in range(size - len(head)))


def deployable_payload(n_in: int = 2, n_out: int = 3) -> DeployablePayload:
    weights = b"\x11\x22\x33\x44\x55"
    return DeployablePayload(
        input_formats=(1, 0, *(0,) * (n_in - 2)),
        output_formats=(0, 1, 1, *(0,) * (n_out - 3)),
        input_map=(2, 0, *(1,) * (n_in - 2)),
        output_map=(1, 0, 2, *(0,) * (n_out - 3)),
        num_model_inputs=3,
        microcode=fake_microcode(70, len(weights), n_in, n_out),
        weights=weights,
        kernels=bytes(range(100, 117)),
    )


# -- emulation ---------------------------------------------------------------------------------------


def test_emulation_round_trip() -> None:
    payload = emulation_payload()
    data = payload.to_bytes()
    assert is_emulation_payload(data)
    assert data.startswith(EMULATION_MAGIC)
    assert read_payload(data) == payload
    assert read_payload(bytearray(data)) == payload


def test_emulation_layout() -> None:
    payload = emulation_payload()
    data = payload.to_bytes()
    assert struct.unpack_from("<I", data, 8) == (1,)
    (json_len,) = struct.unpack_from("<I", data, 12)
    description = json.loads(data[16 : 16 + json_len])
    assert description["target"] == "imxrt700"
    assert description["inputs"][0]["channels_last"] is True
    (tflite_len,) = struct.unpack_from("<I", data, 16 + json_len)
    assert data[20 + json_len : 20 + json_len + tflite_len] == payload.tflite
    assert len(data) == 24 + json_len + tflite_len
    assert struct.unpack_from("<I", data, len(data) - 4) == (zlib.crc32(data[:-4]),)


def test_every_truncation_of_an_emulation_payload_is_rejected() -> None:
    data = emulation_payload().to_bytes()
    for length in range(len(data)):
        with pytest.raises(PayloadError):
            read_payload(data[:length])


def test_every_single_byte_corruption_is_detected() -> None:
    data = emulation_payload().to_bytes()
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            corrupted = bytearray(data)
            corrupted[position] ^= flip
            with pytest.raises(PayloadError):
                read_payload(bytes(corrupted))


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _emulation_bytes(version: int, description: bytes, tflite: bytes) -> bytes:
    return _with_crc(
        EMULATION_MAGIC
        + struct.pack("<II", version, len(description))
        + description
        + struct.pack("<I", len(tflite))
        + tflite
    )


@pytest.mark.parametrize(
    ("version", "description", "message"),
    [
        (2, b"{}", "version 2 is not supported"),
        (1, b"\xff{", "not UTF-8 JSON"),
        (1, b"[]", "exactly 'target', 'inputs', 'outputs'"),
        (1, b'{"target": "imxrt700", "inputs": {}, "outputs": []}', "must be lists"),
        (1, b'{"target": "imxrt700", "inputs": [{"shape": [1]}], "outputs": []}', "an object with keys"),
        (1, b'{"target": "", "inputs": [], "outputs": []}', "target '' must be a non-empty string"),
    ],
)
def test_malformed_emulation_contents(version: int, description: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        read_payload(_emulation_bytes(version, description, tiny_tflite()))


def test_emulation_rejects_trailing_bytes_and_non_tflite() -> None:
    data = emulation_payload().to_bytes()
    with pytest.raises(PayloadError, match="trailing"):
        read_payload(data + b"\x00")
    with pytest.raises(PayloadError, match="TFL3"):
        read_payload(_emulation_bytes(1, b'{"target": "x", "inputs": [], "outputs": []}', b"not a model"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (((1, -2), "int8", 0.1, 0, False, 0), "shape"),
        (([1, 2], "int8", 0.1, 0, False, 0), "shape"),
        (((1, 2), "uint8", 0.1, 0, False, 0), "dtype 'uint8'"),
        (((1, 2), "int8", float("nan"), 0, False, 0), "scale"),
        (((1, 2), "int8", 0.1, 0.5, False, 0), "zero_point"),
        (((1, 2), "int8", 0.1, 0, True, 0), "channels_last needs rank"),
        (((1, 2), "int8", 0.1, 0, 1, 0), "must be a bool"),
        (((1, 2), "int8", 0.1, 0, False, -1), "arg_index"),
    ],
)
def test_tensor_spec_validation(args: tuple, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        TensorSpec(*args)


# -- deployable --------------------------------------------------------------------------------------


def test_deployable_byte_layout() -> None:
    payload = deployable_payload()
    data = payload.to_bytes()
    # Header: counts, formats (inputs then outputs), maps (inputs then outputs), version, zero padding to 16.
    expected_header = bytes([2, 3, 3]) + bytes([1, 0]) + bytes([0, 1, 1]) + bytes([2, 0]) + bytes([1, 0, 2])
    expected_header += bytes([1])
    assert len(expected_header) == 14
    assert data[0:14] == expected_header
    assert data[14:16] == b"\x00\x00"
    # Microcode (70 bytes) at 16, padded to 80 bytes.
    assert data[16:86] == payload.microcode
    assert data[86:96] == bytes(10)
    # Weights (5 bytes) at 96, padded to 16.
    assert data[96:101] == b"\x11\x22\x33\x44\x55"
    assert data[101:112] == bytes(11)
    # Kernels (17 bytes) at 112, padded to 32.
    assert data[112:129] == bytes(range(100, 117))
    assert data[129:144] == bytes(15)
    assert len(data) == 144
    # The microcode header the device runtime reads right after the header.
    assert struct.unpack_from("<I", data, 16) == (MICROCODE_MAGIC,)


def assert_same_deployable(read: DeployablePayload | EmulationPayload, payload: DeployablePayload) -> None:
    # The kernels size is recorded nowhere, so the kernels come back with their zero padding.
    assert isinstance(read, DeployablePayload)
    assert read.kernels == payload.kernels + bytes(-len(payload.kernels) % 16)
    assert {**read.__dict__, "kernels": b""} == {**payload.__dict__, "kernels": b""}
    assert read.to_bytes() == payload.to_bytes()


def test_deployable_round_trip() -> None:
    payload = deployable_payload()
    data = payload.to_bytes()
    assert not is_emulation_payload(data)
    assert_same_deployable(read_payload(data), payload)


def test_deployable_version_0_reads_counts_from_older_words() -> None:
    words = [0] * 13
    words[0], words[6], words[7], words[11], words[12] = MICROCODE_MAGIC, 52, 0, 1, 1
    payload = DeployablePayload((0,), (0,), (0,), (0,), 1, struct.pack("<13I", *words), b"", b"", version=0)
    data = payload.to_bytes()
    assert data[0:8] == bytes([1, 1, 1, 0, 0, 0, 0, 0])
    assert read_payload(data) == payload


def test_deployable_255_io_accepted_256_rejected() -> None:
    payload = deployable_payload(n_in=255, n_out=255)
    data = payload.to_bytes()
    assert data[0:3] == bytes([255, 255, 3])
    assert_same_deployable(read_payload(data), payload)
    with pytest.raises(PayloadError, match="256 Neutron inputs, at most 255"):
        deployable_payload(n_in=256)
    with pytest.raises(PayloadError, match="256 Neutron outputs, at most 255"):
        deployable_payload(n_out=256)


def test_deployable_truncations_before_the_kernels_are_rejected() -> None:
    # Nothing records the kernels size, so a cut inside the kernels at a 16-byte boundary cannot be detected
    # (NXP's device runtime has the same blind spot); every shorter cut must be.
    data = deployable_payload().to_bytes()
    for length in range(112):
        with pytest.raises(PayloadError):
            read_payload(data[:length])


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (3, 2, "formats"),
        (8, 3, "points past the 3 model inputs"),
        (13, 7, "version 7 is not supported"),
        (15, 1, "padding is not zero"),
        (16, 0, "no Neutron microcode magic"),
        (16 + 4 * 6, 200, "run past"),
        (16 + 4 * 13, 1, "microcode expects 1 inputs"),
    ],
)
def test_deployable_malformed_fields(position: int, value: int, message: str) -> None:
    data = bytearray(deployable_payload().to_bytes())
    data[position] = value
    with pytest.raises(PayloadError, match=message):
        read_payload(bytes(data))


def test_deployable_construction_checks() -> None:
    base = deployable_payload()
    fields = base.__dict__
    with pytest.raises(PayloadError, match="2 input formats but 1 input map"):
        DeployablePayload(**{**fields, "input_map": (0,)})
    with pytest.raises(PayloadError, match="weights size 5, but the weights section has 40"):
        DeployablePayload(**{**fields, "weights": bytes(40)})
    with pytest.raises(PayloadError, match="num_model_inputs 256"):
        DeployablePayload(**{**fields, "num_model_inputs": 256})
    with pytest.raises(PayloadError, match="version 2"):
        DeployablePayload(**{**fields, "version": 2})


def test_garbage_is_rejected() -> None:
    with pytest.raises(PayloadError, match="empty"):
        read_payload(b"")
    with pytest.raises(PayloadError, match="not a payload"):
        read_payload(b"hello world")
    with pytest.raises(PayloadError):
        read_payload(bytes(64))
