"""The ZGR v2 estimator's stated properties (docs/PERTURBATIONS.md §4), checked against an exact gradient.

A small logistic-regression model gives the exact gradient g of a fixed batch; two-point SPSA along the portable
directions (float32, as devices draw them) gives the scalars. Over many seeds the subspace estimate a = ξ·p/s must
average to Vᵀg within the standard error implied by its stated variance Σ_{j≠k}(Vᵀg)_j², its measured variance must
match that statement, and the complement estimate p·u_⊥ must average to (I − VVᵀ)g with no subspace component.
"""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.perturb import STREAM_XI, Direction, direction, rademacher, subspace_scale

N_PARAMS, M, DRAWS, EPS = 48, 4, 4000, 1e-4


def _model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, N_PARAMS))
    y = (rng.random(32) < 0.5).astype(np.float64)
    theta = rng.normal(scale=0.3, size=N_PARAMS)

    def loss(t: np.ndarray) -> float:
        z = x @ t
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    def grad(t: np.ndarray) -> np.ndarray:
        return x.T @ (1.0 / (1.0 + np.exp(-(x @ t))) - y) / len(y)

    basis, _ = np.linalg.qr(rng.normal(size=(N_PARAMS, M)))
    return loss, grad(theta), theta, basis.astype(np.float32)


def _spsa(loss, theta: np.ndarray, u: np.ndarray) -> float:
    u = u.astype(np.float64)
    return (loss(theta + EPS * u) - loss(theta - EPS * u)) / (2 * EPS)


@pytest.fixture(scope="module")
def model():
    return _model()


def test_subspace_estimate_is_unbiased_with_the_stated_variance(model) -> None:
    loss, g, theta, basis = model
    coords = basis.astype(np.float64).T @ g  # Vᵀg, the target
    s = float(subspace_scale(N_PARAMS, M))
    a = np.empty((DRAWS, M))
    for seed in range(DRAWS):
        u = direction(seed, 3, N_PARAMS, Direction.SUBSPACE, basis)
        xi = rademacher(seed, 3, M, STREAM_XI).astype(np.float64)
        a[seed] = xi * _spsa(loss, theta, u) / s
    stated_var = np.sum(coords**2) - coords**2  # Σ_{j≠k} (Vᵀg)_j²
    se = np.sqrt(stated_var / DRAWS)
    assert np.all(np.abs(a.mean(axis=0) - coords) < 4.5 * se + 1e-9), (a.mean(axis=0), coords, se)
    # the sample variance of a Rademacher product: within ~10 % of the statement at 4,000 draws
    np.testing.assert_allclose(a.var(axis=0, ddof=1), stated_var, rtol=0.12)


def test_complement_estimate_is_unbiased_and_leaves_the_subspace_alone(model) -> None:
    loss, g, theta, basis = model
    v = basis.astype(np.float64)
    target = g - v @ (v.T @ g)  # (I − VVᵀ)g
    est = np.zeros(N_PARAMS)
    for seed in range(DRAWS):
        u = direction(seed, 5, N_PARAMS, Direction.COMPLEMENT, basis).astype(np.float64)
        est += _spsa(loss, theta, u) * u
    est /= DRAWS
    assert np.abs(v.T @ est).max() < 1e-5 * np.abs(est).max()  # nothing of the subspace leaks in
    # E‖mean − target‖² ≈ (n − m)·‖target‖²/DRAWS (Rademacher, docs/PERTURBATIONS.md §4): within a factor of 1.5
    err = float(np.sum((est - target) ** 2))
    expected = (N_PARAMS - M) * float(np.sum(target**2)) / DRAWS
    assert expected / 1.5 < err < 1.5 * expected, (err, expected)


def test_iso_estimate_is_unbiased(model) -> None:
    loss, g, theta, _ = model
    est = np.zeros(N_PARAMS)
    for seed in range(DRAWS):
        z = direction(seed, 7, N_PARAMS, Direction.ISO).astype(np.float64)
        est += _spsa(loss, theta, z) * z
    est /= DRAWS
    expected = (N_PARAMS - 1) * float(np.sum(g**2)) / DRAWS
    assert float(np.sum((est / 1.0 - g) ** 2)) < 1.5 * expected
