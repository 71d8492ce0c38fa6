import json

import numpy as np
import pytest

from cooperllm.perturb import (
    MAX_SEED,
    STREAM_XI,
    Direction,
    add_direction,
    direction,
    mix64,
    project_coefficients,
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


def test_direction_norms_and_orthogonality():
    n, m = 64, 4
    basis = _orthonormal(n, m)
    v = basis.astype(np.float64)
    for seed in range(20):
        iso = direction(seed, 5, n, Direction.ISO).astype(np.float64)
        sub = direction(seed, 5, n, Direction.SUBSPACE, basis).astype(np.float64)
        comp = direction(seed, 5, n, Direction.COMPLEMENT, basis).astype(np.float64)
        assert np.dot(sub, sub) == pytest.approx(n, rel=1e-5)  # ‖s·Vξ‖² = (n/m)·m
        assert np.abs(v.T @ comp).max() < 1e-5  # the complement has no component in the subspace
        np.testing.assert_allclose(comp + v @ (v.T @ iso), iso, atol=1e-5)  # z = P_V z + P_⊥ z


def test_projection_sums_in_row_order_in_double():
    basis = _orthonormal(16, 2)
    z = rademacher(3, 0, 16).astype(np.float32)
    expected = [np.float32(sum(float(basis[i, k]) * float(z[i]) for i in range(16))) for k in range(2)]
    assert project_coefficients(basis, z).tolist() == expected


def test_guided_directions_need_a_matching_basis():
    with pytest.raises(ValueError, match="basis"):
        direction(0, 0, 8, Direction.SUBSPACE)
    with pytest.raises(ValueError, match="does not match"):
        direction(0, 0, 8, Direction.COMPLEMENT, _orthonormal(6, 2))


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
        z = direction(s, 0, n, Direction.ISO).astype(np.float64)
        est += (z @ grad) * z
    est /= draws
    assert np.linalg.norm(est - grad) / np.linalg.norm(grad) < 0.06


def test_add_direction_perturb_and_restore_drift_is_bounded():
    theta = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    orig = theta.copy()
    eps = 1e-3
    add_direction(theta, eps, 9, 0, Direction.ISO)
    add_direction(theta, -2 * eps, 9, 0, Direction.ISO)
    add_direction(theta, eps, 9, 0, Direction.ISO)
    # Each in-place add rounds once: the drift is at most a few ulps of |θ| + ε.
    bound = 4 * np.spacing(np.abs(orig) + eps)
    assert np.all(np.abs(theta - orig) <= bound)
