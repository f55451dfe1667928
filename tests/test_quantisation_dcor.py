"""GuardedTuning's building blocks: b-bit per-row quantisation (bytes, error bound) and distance correlation."""

import math

import numpy as np
import pytest
import torch

from privtune_ray.designs.dcor import distance_correlation
from privtune_ray.errors import ConfigError
from privtune_ray.quantisation import dequantise, quantise, quantised_bytes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 12, 16])
def test_quantisation_round_trip_is_within_half_a_step_and_costs_the_stated_bytes(bits):
    x = torch.randn(3, 7, 48) * torch.linspace(0.1, 5, 48)
    x[0, 0] = 1.25  # a constant row
    q = quantise(x, bits)
    back = dequantise(q)
    step = q.scale.reshape(3, 7, 1)
    assert (back - x).abs().le(step / 2 + 1e-5).all() and torch.equal(back[0, 0], x[0, 0])
    assert q.nbytes == quantised_bytes(x.shape, bits) == math.ceil(3 * 7 * 48 * bits / 8) + 8 * 3 * 7


def test_fewer_bits_cost_less_and_lose_more():
    x = torch.randn(32, 64, 384)
    fp32 = x.numel() * 4
    sizes = {b: quantised_bytes(x.shape, b) for b in (4, 8)}
    errors = {b: (dequantise(quantise(x, b)) - x).abs().mean().item() for b in (4, 8)}
    assert sizes[8] / fp32 == pytest.approx(0.25 + 8 / (4 * 384)) and sizes[4] < sizes[8]
    assert errors[4] > 10 * errors[8]


@pytest.mark.parametrize("bits", [1, 17, 0, 8.0, True])
def test_bits_outside_2_to_16_are_one_clear_error(bits):
    with pytest.raises(ConfigError, match=r"quantisation bits must be an integer in 2..16"):
        quantise(torch.zeros(2, 4), bits)


def _dcor_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    def centred(z):
        d = np.linalg.norm(z[:, None] - z[None], axis=-1)
        return d - d.mean(0) - d.mean(1)[:, None] + d.mean()

    a, b = centred(x), centred(y)
    return math.sqrt((a * b).mean() / math.sqrt((a * a).mean() * (b * b).mean()))


def test_distance_correlation_matches_the_definition_and_its_limits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = torch.randn(64, 3, generator=g)
    assert distance_correlation(x, y).item() == pytest.approx(_dcor_by_hand(x.numpy(), y.numpy()), rel=1e-4)
    assert distance_correlation(x, 3 * x + 1).item() == pytest.approx(1.0, abs=1e-4)  # a similarity transform
    # The sample dCor of independent data shrinks with n (its V-statistic is biased upwards at small n).
    big_x, big_y = torch.randn(400, 5, generator=g), torch.randn(400, 3, generator=g)
    assert distance_correlation(big_x, big_y).item() < min(0.25, distance_correlation(x, y).item())
    assert distance_correlation(big_x, big_x**2).item() > 2 * distance_correlation(big_x, big_y).item()  # nonlinear too


def test_distance_correlation_is_differentiable_towards_decorrelation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=g)
    a = (x @ torch.randn(8, 8, generator=g) + 0.1 * torch.randn(32, 8, generator=g)).requires_grad_(True)
    before = distance_correlation(x, a)
    before.backward()
    assert torch.isfinite(a.grad).all()
    with torch.no_grad():
        after = distance_correlation(x, a - 0.5 * a.grad / a.grad.norm())
    assert after < before


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantised_message_round_trips_and_is_smaller_by_the_stated_bytes(bits):
    from privtune_ray.message import Message

    hidden = torch.randn(4, 16, 384)
    mask, labels = torch.ones(4, 16, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    fp32 = Message(hidden, mask, labels, split_depth=2).to_bytes()
    wire = Message(hidden, mask, labels, split_depth=2, bits=bits).to_bytes()
    back = Message.from_bytes(wire)
    q = quantise(hidden, bits)
    torch.testing.assert_close(back.hidden, dequantise(q))
    assert back.bits == bits and back.split_depth == 2 and torch.equal(back.labels, labels)
    saved = (len(fp32) - hidden.numel() * 4) - (len(wire) - quantised_bytes(hidden.shape, bits))
    assert abs(saved) < 300  # the rest is the same mask, labels and a slightly different JSON header


def test_design_bits_outside_2_to_16_is_one_clear_error():
    from privtune_ray.config import load_config

    with pytest.raises(ConfigError, match=r"'design.bits'.*2..16"):
        load_config(None, ["design.bits=32"])
