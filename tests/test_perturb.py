import json

import numpy as np
import pytest

from cooperllm.perturb import (
    MAX_SEED,
    STREAM_XI,
    add_perturbation,
    mix64,
    perturbation,
    rademacher,
    stream_key,
)
from cooperllm.spec.golden import GOLDEN_PATH, build


def test_golden_file_matches_the_implementation():
    committed = json.loads(GOLDEN_PATH.read_text())
    assert committed == json.loads(json.dumps(build())), "regenerate with python -m cooperllm.spec.golden --write"


def test_mix64_known_splitmix_output():
    # First output of the reference SplitMix64 seeded with 0.
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_rademacher_prefix_is_stable_and_entries_independent_of_length():
    long = rademacher(42, 3, 10_000)
    assert np.array_equal(rademacher(42, 3, 77), long[:77])
    assert set(np.unique(long)) == {-1, 1}
    assert long.dtype == np.int8


def test_streams_differ_across_seed_block_and_stream():
    base = rademacher(1, 0, 4096)
    for other in (rademacher(2, 0, 4096), rademacher(1, 1, 4096), rademacher(1, 0, 4096, STREAM_XI)):
        agreement = float((base == other).mean())
        assert 0.45 < agreement < 0.55


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(seed=MAX_SEED + 1), dict(block=-1), dict(block=1 << 32)])
def test_key_rejects_out_of_range_inputs(bad):
    args = dict(seed=0, block=0) | bad
    with pytest.raises(ValueError):
        stream_key(args["seed"], args["block"])


def test_rademacher_moments():
    z = np.stack([rademacher(s, 0, 512).astype(np.float64) for s in range(2000)])
    assert abs(z.mean()) < 0.01
    assert np.allclose((z**2).mean(axis=0), 1.0)
    cov = z.T @ z / len(z)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 0.12


def _orthonormal(n: int, m: int, seed: int = 0) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, m)))[0].astype(np.float32)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_guided_covariance_has_trace_n(alpha):
    n, m, draws = 64, 4, 6000
    basis = _orthonormal(n, m)
    z = np.stack([perturbation(s, 5, n, basis, alpha).astype(np.float64) for s in range(draws)])
    cov = z.T @ z / draws
    expected = alpha * np.eye(n) + (1 - alpha) * (n / m) * (basis @ basis.T)
    assert abs(np.trace(cov) - n) / n < 0.03
    assert np.abs(cov - expected).max() < 0.35 * max(1.0, (1 - alpha) * n / m * 0.2)
    assert abs(z.mean()) < 0.05


def test_spsa_estimator_recovers_the_gradient_isotropic():
    # f(θ) = ½ θᵀAθ; ∇f = Aθ. Central differences are exact for quadratics, so p = zᵀ∇f.
    rng = np.random.default_rng(1)
    n = 32
    a = np.diag(rng.uniform(0.5, 2.0, n))
    theta = rng.standard_normal(n)
    grad = a @ theta
    est = np.zeros(n)
    draws = 20000
    for s in range(draws):
        z = perturbation(s, 0, n).astype(np.float64)
        est += (z @ grad) * z
    est /= draws
    assert np.linalg.norm(est - grad) / np.linalg.norm(grad) < 0.06


def test_guided_estimator_is_sigma_times_gradient():
    rng = np.random.default_rng(2)
    n, m, alpha = 32, 4, 0.25
    basis = _orthonormal(n, m, 3).astype(np.float64)
    grad = rng.standard_normal(n)
    sigma = alpha * np.eye(n) + (1 - alpha) * (n / m) * basis @ basis.T
    est = np.zeros(n)
    draws = 40000
    for s in range(draws):
        z = perturbation(s, 1, n, basis.astype(np.float32), alpha).astype(np.float64)
        est += (z @ grad) * z
    est /= draws
    target = sigma @ grad
    assert np.linalg.norm(est - target) / np.linalg.norm(target) < 0.06


def test_add_perturbation_perturb_and_restore_drift_is_bounded():
    theta = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    orig = theta.copy()
    eps = 1e-3
    add_perturbation(theta, eps, 9, 0)
    add_perturbation(theta, -2 * eps, 9, 0)
    add_perturbation(theta, eps, 9, 0)
    # Each in-place add rounds once: the drift is at most a few ulps of |θ| + ε.
    bound = 4 * np.spacing(np.abs(orig) + eps)
    assert np.all(np.abs(theta - orig) <= bound)


def test_guided_scales_reject_bad_alpha():
    with pytest.raises(ValueError):
        perturbation(0, 0, 8, _orthonormal(8, 2), alpha=1.5)
