"""Wire schemas and tensor frames: round trips and refusals of malformed input (torch-free)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from pydantic import ValidationError

from cooperllm.frames import (
    FrameError,
    decode_plain_frame,
    decode_tensor_frame,
    encode_plain_frame,
    encode_tensor_frame,
)
from cooperllm.protocol import ReportIn, RunConfig


def test_plain_frame_roundtrip_and_refusals():
    a = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    frame = encode_plain_frame(a)
    assert np.array_equal(decode_tensor_frame(frame), a)
    with pytest.raises(FrameError, match="checksum"):
        decode_plain_frame(frame[:-4] + bytes(4))
    with pytest.raises(FrameError, match="payload"):
        decode_plain_frame(frame[:-1])
    with pytest.raises(FrameError, match="allowed"):
        decode_plain_frame(frame, max_elements=20)
    huge = frame[:8] + struct.pack("<2I", 1 << 30, 1 << 30) + frame[16:]
    with pytest.raises(FrameError):
        decode_plain_frame(huge)
    with pytest.raises(FrameError, match="NaN"):
        decode_plain_frame(encode_plain_frame(np.array([np.nan], dtype=np.float32)))
    with pytest.raises(FrameError):
        decode_tensor_frame(b"")
    with pytest.raises(FrameError):
        decode_tensor_frame(b"\x80\x04pickle-looking bytes")


def test_dtc_frame_is_used_and_decodes_deterministically():
    a = np.random.default_rng(1).standard_normal((512, 4)).astype(np.float32)
    frame = encode_tensor_frame(a)
    once, twice = decode_tensor_frame(frame), decode_tensor_frame(frame)
    assert np.array_equal(once, twice) and once.shape == a.shape
    cos = float(np.dot(once.ravel(), a.ravel()) / np.linalg.norm(once) / np.linalg.norm(a))
    assert cos > 0.99
    assert np.array_equal(decode_tensor_frame(encode_tensor_frame(a, lossless=True)), a)


def test_schema_validation():
    with pytest.raises(ValidationError):
        ReportIn(seed=-1, block=0, step=0, scalar=1.0, n_examples=1)
    with pytest.raises(ValidationError):
        ReportIn(seed=1, block=0, step=0, scalar=float("inf"), n_examples=1)
    with pytest.raises(ValidationError):
        RunConfig(blocks=[-1, 0])
    with pytest.raises(ValidationError):
        RunConfig(quorum=2, min_devices=3)
    with pytest.raises(ValidationError):
        RunConfig(lam=1.5)
    assert RunConfig(lam="auto").lam == "auto"
    assert RunConfig.model_validate_json(RunConfig(blocks=[0, 2]).model_dump_json()).blocks == [0, 2]


def test_openapi_operation_ids_are_stable():
    from cloud_api.app import create_app

    spec = create_app().openapi()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert ids == {
        "enroll",
        "get_current_round",
        "get_guidance",
        "list_guidance",
        "upload_reports",
        "upload_report_frame",
        "upload_delta",
        "get_model_sync",
        "get_adapter",
        "get_adapter_delta",
        "get_peft_export",
        "get_health",
        "get_metrics",
        "create_run",
        "get_run",
        "list_rounds",
        "issue_enrolment_token",
        "revoke_device",
    }
    body = spec["paths"]["/v1/rounds/{round}/reports"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["reports"]["items"] == {"$ref": "#/components/schemas/ReportIn"}
