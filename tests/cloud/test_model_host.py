"""The cloud's backprop in chunks: the same mean gradient and loss as one pass over all the rows, with one chunk's
activations in memory (docs/SECURITY.md §4: a run's grad_batch_size no longer sizes the server's memory)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np


def test_chunked_backprop_gives_the_full_batch_gradient(tiny_model_dir, public_tsv):
    from cloud_api.model_host import load_model_host
    from cloud_api.settings import Settings

    host = load_model_host(Settings(model=str(tiny_model_dir), public_data=public_tsv, public_n=24, seq_len=24))
    rows = np.arange(host.n_public)[::-1]  # any order, a last chunk shorter than the rest
    theta = host.theta0 + np.random.default_rng(0).normal(0, 1e-2, host.layout.total).astype(np.float32)
    whole_grad, whole_loss = replace(host, backprop_chunk=len(rows)).gradient(theta, rows)
    chunk_grad, chunk_loss = replace(host, backprop_chunk=5).gradient(theta, rows)
    assert np.linalg.norm(whole_grad) > 0
    np.testing.assert_allclose(chunk_grad, whole_grad, rtol=1e-4, atol=1e-6 * np.abs(whole_grad).max())
    assert abs(chunk_loss - whole_loss) < 1e-5 * abs(whole_loss)
