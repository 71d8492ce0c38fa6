"""Adapter downloads: θ as safetensors, as a lossless delta from an earlier version, and the PEFT export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from cloud_api.deps import DeviceId, State
from cloud_api.errors import DEVICE_ERRORS, ServiceError
from cooperllm import theta_delta
from cooperllm.checkpoint import load_theta
from cooperllm.peft_export import peft_zip
from cooperllm.protocol import FRAME_MEDIA_TYPE

router = APIRouter(prefix="/adapter", tags=["adapter"], responses=DEVICE_ERRORS)
Version = Annotated[int | None, Query(ge=0, le=1_000_000, description="round whose starting θ to fetch")]
FromVersion = Annotated[
    int, Query(alias="from", ge=0, le=1_000_000, description="round whose starting θ the device holds")
]
ToVersion = Annotated[int, Query(alias="to", ge=0, le=1_000_000, description="round whose starting θ to fetch")]


@router.get(
    "",
    operation_id="get_adapter",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "safetensors of θ"}},
)
def adapter(state: State, device: DeviceId, version: Version = None):
    """θ at the start of round ``version`` (default: the current round) as safetensors, tensors by layout name."""
    path, v = state.engine.adapter_file(version)
    return FileResponse(path, media_type="application/octet-stream", filename=f"adapter_v{v}.safetensors")


@router.get(
    "/delta",
    operation_id="get_adapter_delta",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "θ delta frame"}},
)
def adapter_delta(state: State, device: DeviceId, from_version: FromVersion, to_version: ToVersion):
    """θ at the start of round ``to`` as a lossless delta from θ at the start of round ``from`` (which the device
    holds): zstd of the byte-shuffled XOR of their float32 bit patterns, framed by ``cooperllm.theta_delta``."""
    if from_version > to_version:
        raise ServiceError(422, "bad_version_range")
    old_path, _ = state.engine.adapter_file(from_version)
    new_path, _ = state.engine.adapter_file(to_version)
    layout = state.host.layout
    frame = theta_delta.encode(
        load_theta(new_path, layout), load_theta(old_path, layout), from_version=from_version, to_version=to_version
    )
    return Response(frame, media_type=FRAME_MEDIA_TYPE)


@router.get(
    "/peft",
    operation_id="get_peft_export",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "PEFT adapter folder, zipped"}},
)
def peft(state: State, device: DeviceId, version: Version = None):
    """``adapter_model.safetensors`` + ``adapter_config.json`` for ``peft.PeftModel.from_pretrained``."""
    path, v = state.engine.adapter_file(version)
    theta = load_theta(path, state.host.layout)
    data = peft_zip(theta, state.host.layout, state.host.adapter, state.host.model_name)
    return Response(
        data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="peft_v{v}.zip"'}
    )
