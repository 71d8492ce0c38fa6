"""Adapter downloads: θ as safetensors, and the PEFT export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from cloud_api.deps import DeviceId, State
from cloud_api.peft_export import peft_zip
from cooperllm.checkpoint import load_theta

router = APIRouter(prefix="/adapter", tags=["adapter"])
Version = Annotated[int | None, Query(ge=0, le=1_000_000, description="round whose starting θ to fetch")]


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
