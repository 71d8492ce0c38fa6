"""A real uvicorn server on 127.0.0.1 (ephemeral port) around the tiny model, and clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_cloud import ADMIN, ENROL, LiveServer, start_server

__all__ = ["ADMIN", "ENROL", "LiveServer", "start_server"]


@pytest.fixture(scope="session")
def public_tsv(tmp_path_factory: pytest.TempPathFactory, sst2_dir: Path) -> Path:
    """A small public split (first 200 rows of SST-2 dev, the public data) so the tiny server starts fast."""
    lines = (sst2_dir / "dev.tsv").read_text().splitlines()[:201]
    path = tmp_path_factory.mktemp("public") / "public.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, public_tsv: Path) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("cloud"), tiny_model_dir, public_tsv)
    yield srv
    srv.stop()
