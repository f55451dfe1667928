"""Mechanisms: statistical tests that can fail, clipping bounds, PrivTune's targets and importance, bad input."""

import numpy as np
import pytest
import torch
from scipy import stats

from privtune_ray.config import MechanismConfig
from privtune_ray.data import collate, load_split, tokenize_split
from privtune_ray.errors import ConfigError
from privtune_ray.mechanisms.activation_dp import GaussianActivation, LaplaceActivation, clip_rows
from privtune_ray.mechanisms.dchi import DChi, sample_dchi
from privtune_ray.mechanisms.importance import token_importance
from privtune_ray.mechanisms.privtune_graph import graph_from_anchors, knn_graph, rings
from privtune_ray.mechanisms.registry import build_mechanism
from privtune_ray.models import resolve_model, split_model

D, ETA = 384, 50.0


def _draws(n_tokens=4000, eta=ETA, seed=0):
    return sample_dchi((n_tokens,), D, eta, np.random.default_rng(seed), torch.Generator().manual_seed(seed))


def test_dchi_radius_is_gamma_d_over_eta():
    radius = _draws().norm(dim=-1).double().numpy()
    assert stats.kstest(radius, "gamma", args=(D, 0, 1 / ETA)).pvalue > 1e-3
    # the test has power: a radius twice too large is rejected
    assert stats.kstest(radius, "gamma", args=(D, 0, 2 / ETA)).pvalue < 1e-6
    assert radius.mean() == pytest.approx(D / ETA, rel=0.01)


def test_dchi_directions_are_uniform_on_the_sphere():
    z = _draws(6000)
    u = (z / z.norm(dim=-1, keepdim=True)).double().numpy()
    # one coordinate of a uniform unit vector: (u_1 + 1)/2 ~ Beta((d-1)/2, (d-1)/2)
    a = (D - 1) / 2
    for axis in (0, 17, 383):
        assert stats.kstest((u[:, axis] + 1) / 2, "beta", args=(a, a)).pvalue > 1e-3
    assert np.linalg.norm(u.mean(0)) < 4 / np.sqrt(len(u))  # no preferred direction


def test_dchi_radii_are_independent_per_token():
    g, rng = torch.Generator().manual_seed(1), np.random.default_rng(1)
    radius = sample_dchi((2000, 32), D, ETA, rng, g).norm(dim=-1).double().numpy()
    # one radius per batch (the known bug) would make every row constant: check the spread within rows
    within = radius.var(axis=1, ddof=1).mean()
    assert within == pytest.approx(D / ETA**2, rel=0.1)
    r = np.corrcoef(radius[:, 0], radius[:, 1])[0, 1]
    assert abs(r) < 4 / np.sqrt(len(radius))


def test_dchi_perturbs_real_tokens_only():
    h = torch.randn(2, 5, D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = DChi(ETA, seed=0).perturb(h, mask, torch.zeros(2, 5, dtype=torch.long))
    assert torch.equal(out[0, 3:], h[0, 3:])
    assert (out[mask.bool()] - h[mask.bool()]).norm(dim=-1).min() > 1.0


def test_clipping_bounds_hold():
    h = torch.randn(64, D) * torch.logspace(-2, 2, 64).unsqueeze(1)
    for p in (1, 2):
        clipped = clip_rows(h, 3.0, p)
        norms = clipped.norm(p=p, dim=-1)
        assert (norms <= 3.0 * (1 + 1e-5)).all()
        small = h.norm(p=p, dim=-1) <= 3.0
        assert torch.allclose(clipped[small], h[small])
        assert torch.allclose(norms[~small], torch.tensor(3.0))


@pytest.mark.parametrize(
    "cls,expected_spread", [(GaussianActivation, 0.7 * 2.0), (LaplaceActivation, 0.7 * 2.0 * np.sqrt(2))]
)
def test_activation_noise_has_the_configured_scale(cls, expected_spread):
    mech = cls(noise_multiplier=0.7, clip_norm=2.0, seed=0)
    h = torch.randn(8, 64, D)
    mask = torch.ones(8, 64, dtype=torch.long)
    noise = mech.perturb(h, mask, torch.zeros_like(mask)) - clip_rows(h, 2.0, cls.norm_p)
    assert noise.std().item() == pytest.approx(expected_spread, rel=0.02)  # std of Laplace(b) is b·√2


def test_bad_mechanism_parameters_are_errors():
    with pytest.raises(ConfigError, match="eta must be > 0"):
        DChi(0.0)
    with pytest.raises(ConfigError, match="eta must be > 0"):
        DChi(-1.0)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        GaussianActivation(noise_multiplier=0.0, clip_norm=1.0)
    with pytest.raises(ConfigError, match=r"delta must be in \(0, 1\)"):
        LaplaceActivation(noise_multiplier=1.0, clip_norm=1.0, delta=1.5)
    with pytest.raises(ConfigError, match="clip norm"):
        GaussianActivation(noise_multiplier=1.0, clip_norm=-1.0)


# --------------------------------------------------------------------------- PrivTune graph


def test_knn_graph_is_symmetric_with_k_neighbours():
    anchors = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    adj = knn_graph(anchors, k=5)
    assert (adj != adj.T).nnz == 0 and adj.diagonal().sum() == 0
    assert (np.diff(adj.indptr) >= 5).all()


def test_rings_are_exact_hop_distances_on_a_path():
    import scipy.sparse as sp

    n = 10
    path = sp.diags([np.ones(n - 1), np.ones(n - 1)], [1, -1], format="csr", dtype=np.float32)
    hop3 = rings(path, np.array([0, 5]), 3)[-1].toarray() > 0
    assert np.flatnonzero(hop3[0]).tolist() == [3]
    assert np.flatnonzero(hop3[1]).tolist() == [2, 8]


def test_graph_errors_for_n_beyond_diameter_and_k_beyond_vocabulary():
    anchors = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="exceeds the diameter"):
        graph_from_anchors(anchors, k=10, n_hops=40)
    with pytest.raises(ConfigError, match=r"k=30 must be in 1\.\.29"):
        graph_from_anchors(anchors, k=30)


def test_candidates_come_from_the_n_hop_ring():
    anchors = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    graph = graph_from_anchors(anchors, k=4, n_hops=2, n_candidates=5)
    adj = knn_graph(anchors, 4)
    for v in (0, 77, 299):
        ring = set(np.flatnonzero(rings(adj, np.array([v]), 2)[-1].toarray()[0]).tolist())
        cands = [c for c in graph.candidates[v].tolist() if c >= 0]
        assert cands and set(cands) <= ring


# --------------------------------------------------------------------------- PrivTune on MiniLM


@pytest.fixture(scope="module")
def privtune_setup(minilm, tokenizer):
    split = split_model(minilm, 2)
    data = tokenize_split(load_split("sst2", "train", max_samples=3000, seed=0), tokenizer, 64)
    dev = tokenize_split(load_split("sst2", "dev"), tokenizer, 64)
    batch = collate(dev, np.arange(32), tokenizer.pad_token_id)
    return split, data, batch


def _privtune(split, tokenizer, data, **overrides):
    mech = build_mechanism(
        MechanismConfig(name="privtune", **overrides), split, tokenizer, resolve_model("minilm"), seed=0
    )
    mech.fit(data)
    return mech


def test_privtune_release_moves_towards_the_n_hop_target(privtune_setup, tokenizer):
    split, data, batch = privtune_setup
    h = split.bottom(batch.input_ids, batch.attention_mask)
    real = batch.attention_mask.bool()
    for eta in (1e6, 50.0):  # δ alone (negligible noise), then the default release
        mech = _privtune(split, tokenizer, data, eta=eta)
        out = mech.perturb(h, batch.attention_mask, batch.input_ids)
        rows, ids = h[real], batch.input_ids[real]
        target = mech.targets(torch.nn.functional.normalize(rows, dim=-1), ids)
        own = mech.unit_anchors[ids]
        cos = torch.nn.functional.cosine_similarity
        before = (cos(rows, target, dim=-1) - cos(rows, own, dim=-1)).mean()
        after = (cos(out[real], target, dim=-1) - cos(out[real], own, dim=-1)).mean()
        assert after > before, (eta, before, after)
        assert torch.equal(out[~real], h[~real])


def test_privtune_offset_respects_the_radius(privtune_setup, tokenizer):
    split, data, batch = privtune_setup
    mech = _privtune(split, tokenizer, data, radius=1.5)
    h = split.bottom(batch.input_ids, batch.attention_mask)
    delta = mech.optimal_offset(h, batch.attention_mask, batch.input_ids)
    norms = delta.norm(dim=-1)
    assert norms.max() <= 1.5 + 1e-4 and norms[batch.attention_mask.bool()].mean() > 0.5
    assert (norms[~batch.attention_mask.bool()] == 0).all()


def test_privtune_plane_reduction_equals_full_dimensional_pgd(privtune_setup, tokenizer):
    """Without a proxy head the PGD runs on 2-D coordinates in span{h_i, u_i}; it must match the d-dim loop."""
    split, data, batch = privtune_setup
    mech = _privtune(split, tokenizer, data)
    h = split.bottom(batch.input_ids, batch.attention_mask)
    real = batch.attention_mask.bool()
    rows, ids = h[real], batch.input_ids[real]
    h_unit = torch.nn.functional.normalize(rows, dim=-1)
    u = mech.unit_anchors[ids] - mech.targets(h_unit, ids) - mech.p.lambda_s * h_unit
    full = mech._pgd(rows, u)
    reduced = mech.optimal_offset(h, batch.attention_mask, batch.input_ids)[real]
    assert full.norm(dim=-1).mean() > 0.5
    torch.testing.assert_close(reduced, full, atol=1e-4, rtol=1e-4)


def test_importance_scores_and_scaling(privtune_setup, tokenizer):
    split, data, batch = privtune_setup
    w = token_importance(data, 30522, tokenizer.all_special_ids)
    assert w.min() == 0 and w.max() == 1 and (w[tokenizer.all_special_ids] == 0).all()
    (the,) = tokenizer.convert_tokens_to_ids(["the"])
    assert w[the] < np.quantile(w[w > 0], 0.5)  # frequent and label-neutral: unimportant
    mech = _privtune(split, tokenizer, data, pgd_steps=0, s_min=0.2)
    important, unimportant = int(np.argmax(w)), the
    ids = torch.tensor([[important] * 64, [unimportant] * 64]).repeat(20, 1)
    mask = torch.ones_like(ids)
    h = torch.zeros(ids.shape[0], 64, 384)
    noise = mech.perturb(h, mask, ids).norm(dim=-1)
    s = mech.noise_scale(torch.tensor([important, unimportant]))
    assert s[0] == pytest.approx(0.2) and s[1] > 0.9
    ratio = noise[0::2].mean() / noise[1::2].mean()
    assert ratio == pytest.approx((s[0] / s[1]).item(), rel=0.03)  # important tokens get less noise


def test_privtune_proxy_head_runs_and_is_reported(privtune_setup, tokenizer):
    split, data, batch = privtune_setup
    mech = _privtune(split, tokenizer, data.subset(np.arange(300)), proxy_head=True)
    h = split.bottom(batch.input_ids, batch.attention_mask)
    out = mech.perturb(h, batch.attention_mask, batch.input_ids)
    assert torch.isfinite(out).all()
    assert mech.guarantee(2).params["prediction_consistency"] == "proxy head"
    assert _privtune(split, tokenizer, data).guarantee().params["prediction_consistency"].startswith("skipped")


def test_guarantees_compose_over_releases(privtune_setup, tokenizer):
    split, data, _ = privtune_setup
    g1, g3 = _privtune(split, tokenizer, data).guarantee(1), _privtune(split, tokenizer, data).guarantee(3)
    assert g1.eta_per_unit == pytest.approx(50.0 / 0.5) and g3.eta_per_unit == pytest.approx(3 * 50.0 / 0.5)
    gauss = GaussianActivation(noise_multiplier=8.0, clip_norm=1.0, delta=1e-5)
    e1, e2 = gauss.guarantee(1, 64).epsilon, gauss.guarantee(2, 64).epsilon
    assert 0 < e1 < e2 and gauss.guarantee(1, 64).epsilon_rdp >= e1 * 0.99
    assert GaussianActivation(noise_multiplier=16.0, clip_norm=1.0).guarantee(1, 64).epsilon < e1
