"""PrivTune (Liu et al., arXiv 2512.08809): neighbour-guided, importance-scaled d_χ noise on h.

For every real token i (id t = t(i), bottom output h_i ∈ R^d):

1. target(i): among t's n-hop neighbours (candidates from :mod:`privtune_graph`), the one whose anchor
   is nearest (cosine) to h_i.
2. δ_i: K steps of projected gradient descent (step α·r along the normalised gradient, projection onto
   ‖δ_i‖₂ ≤ r) on
       −[cos(h_i+δ_i, a_target) − cos(h_i+δ_i, a_t)]          defence: look like the neighbour, not t
       + λ_s·(1 − cos(h_i+δ_i, h_i))                           semantic preservation
       + λ_d·dist(‖h_i+δ_i‖)                                   distributional validity
       + λ_p·KL(p(pool h) ‖ p(pool(h+δ)))                      prediction consistency (proxy head only)
   dist(ν) = (max(0, ν−ν_hi)/ν_hi)² + (max(0, ν_lo−ν)/ν_lo)², [ν_lo, ν_hi] the 1st–99th percentile of
   anchor norms [ours]. The proxy head [ours]: a softmax-linear probe on mean-pooled h that the device
   trains on its own data when ``proxy_head`` is on; otherwise the term is skipped and reported as such.
3. w_t: token importance from the device's own data (:mod:`importance`); s_i = s_min + (1−s_min)(1−w_t).
4. Release h̃_i = h_i + δ_i + s_i·z_i with z_i ~ d_χ(η) (one Gamma(d, 1/η) radius per token).

Guarantee per token and release: exp((η/s_i)·(‖h(x)−h(x')‖₂ + 2r)) ≤ exp((η/s_min)·(‖h(x)−h(x')‖₂ + 2r)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.batching import TokenizedSplit, batch_indices, collate
from ..errors import ConfigError
from ..models.split import BottomModel, mean_pool
from .base import Mechanism, real_tokens
from .dchi import sample_dchi
from .guarantees import Guarantee, privtune_guarantee, privtune_params
from .importance import token_importance
from .params import PrivTuneParams
from .privtune_graph import TokenGraph, load_or_build_token_graph


class PrivTune(Mechanism):
    name = "privtune"
    Params = PrivTuneParams

    @classmethod
    def from_params(cls, params, split, tokenizer, model_id, seed=0):
        graph = load_or_build_token_graph(
            split.bottom, tokenizer, model_id, params.k, params.n_hops, params.candidates, params.cache_dir
        )
        return cls(graph, split.bottom, tokenizer.all_special_ids, params, pad_id=tokenizer.pad_token_id, seed=seed)

    def __init__(
        self,
        graph: TokenGraph,
        bottom: BottomModel,
        special_ids: list[int],
        params: PrivTuneParams,
        pad_id: int = 0,
        seed: int = 0,
    ):
        params.validate("mechanism")
        super().__init__(seed)
        self.graph, self.bottom, self.p = graph, bottom, params
        self.special_ids = list(special_ids)
        self.pad_id = pad_id
        self.unit_anchors = F.normalize(graph.anchors, dim=-1)
        self.importance = torch.zeros(graph.vocab_size)
        self.proxy: torch.nn.Linear | None = None

    # ------------------------------------------------------------------ per-device state

    def fit(self, data: TokenizedSplit) -> None:
        if self.p.importance_samples is not None and len(data) > self.p.importance_samples:
            data = data.subset(self.np_rng.choice(len(data), self.p.importance_samples, replace=False))
        if self.p.importance:
            self.importance = torch.from_numpy(token_importance(data, self.graph.vocab_size, self.special_ids)).float()
        if self.p.proxy_head:
            self.proxy = self._train_proxy(data)

    def _train_proxy(self, data: TokenizedSplit, max_samples: int = 2000) -> torch.nn.Linear:
        """Softmax-linear probe on mean-pooled bottom outputs of the device's own (labelled) samples."""
        if data.labels.min() < 0:
            raise ConfigError("PrivTune proxy_head needs labelled device data (a classification dataset)")
        if len(data) > max_samples:
            data = data.subset(self.np_rng.choice(len(data), max_samples, replace=False))
        pooled, labels = [], []
        for idx in batch_indices(data.lengths, 128, shuffle=False, bucketing=True):
            batch = collate(data, idx, self.pad_id)
            pooled.append(mean_pool(self.bottom(batch.input_ids, batch.attention_mask), batch.attention_mask))
            labels.append(batch.labels)
        x, y = torch.cat(pooled), torch.cat(labels)
        with torch.random.fork_rng(devices=[]):  # initialised from this device's seed, not the global generator
            torch.manual_seed(self.seed)
            probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
        opt = torch.optim.LBFGS(probe.parameters(), max_iter=100)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(probe(x), y) + 1e-3 * probe.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return probe.requires_grad_(False)

    # ------------------------------------------------------------------ release

    def targets(self, h: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Unit anchor of target(i) for rows h [N, d]: the candidate n-hop neighbour of t(i) nearest to h_i."""
        cand = self.graph.candidates[token_ids]  # [N, C]
        cand_vec = self.unit_anchors[cand.clamp_min(0)]  # [N, C, d]
        sims = torch.einsum("nd,ncd->nc", h, cand_vec).masked_fill(cand < 0, float("-inf"))
        return cand_vec[torch.arange(len(cand)), sims.argmax(-1)]

    def optimal_offset(self, h: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """δ by K steps of PGD on the PrivTune objective, ‖δ_i‖₂ ≤ r (zero on padding).

        Without the proxy head the gradient is analytic: with u = a_t − a_target − λ_s·ĥ (unit vectors),
        v = h + δ, ν = ‖v‖, v̂ = v/ν:  ∇f = (u − (v̂·u)·v̂)/ν + λ_d·dist'(ν)·v̂. That gradient lies in
        span{h_i, u_i}, and so does every iterate, so the K steps run exactly on 2-D coordinates in an
        orthonormal basis of that plane (a few [N, d] operations in all, instead of ~15 per step).
        """
        p = self.p
        delta = torch.zeros_like(h)
        if p.pgd_steps == 0 or p.radius == 0:
            return delta
        real = attention_mask.bool()
        rows, ids = h[real], input_ids[real]  # [N, d]: real tokens only
        h_unit = F.normalize(rows, dim=-1)
        u = self.unit_anchors[ids] - self.targets(h_unit, ids) - p.lambda_s * h_unit
        if self.proxy is None:
            u_along = (u * h_unit).sum(-1, keepdim=True)
            u_perp = u - u_along * h_unit
            u_perp_norm = u_perp.norm(dim=-1, keepdim=True)
            e2 = u_perp / u_perp_norm.clamp_min(1e-12)
            coords = self._pgd(
                torch.cat([rows.norm(dim=-1, keepdim=True), torch.zeros_like(u_along)], -1),
                torch.cat([u_along, u_perp_norm], -1),
            )
            delta[real] = coords[:, :1] * h_unit + coords[:, 1:] * e2
        else:
            proxy_grad = self._proxy_gradient(h, attention_mask)

            def extra(d: torch.Tensor) -> torch.Tensor:
                full = torch.zeros_like(h)
                full[real] = d
                return p.lambda_p * proxy_grad(full)[real]

            delta[real] = self._pgd(rows, u, extra)
        return delta

    def _pgd(self, rows: torch.Tensor, u: torch.Tensor, extra_grad=None) -> torch.Tensor:
        """K normalised-gradient steps of size α·r from δ = 0, each projected onto the r-ball (rows [N, ·])."""
        p = self.p
        lo, hi = self.graph.norm_range
        step_size = p.pgd_step_size * p.radius
        d = torch.zeros_like(rows)
        for _ in range(p.pgd_steps):
            v = rows + d
            norm = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            v_unit = v / norm
            dist_grad = 2 * (F.relu(norm - hi) / hi**2 - F.relu(lo - norm) / lo**2)
            grad = (u - (v_unit * u).sum(-1, keepdim=True) * v_unit) / norm + p.lambda_d * dist_grad * v_unit
            if extra_grad is not None:
                grad = grad + extra_grad(d)
            d = d - step_size * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            d = d * torch.clamp(p.radius / d.norm(dim=-1, keepdim=True).clamp_min(1e-12), max=1.0)
        return d

    def _proxy_gradient(self, h: torch.Tensor, attention_mask: torch.Tensor):
        """δ ↦ ∇_δ KL(p(pool h) ‖ p(pool(h+δ))) for the device's proxy head (autograd)."""
        proxy = self.proxy
        assert proxy is not None  # called only with the proxy head on
        reference = F.log_softmax(proxy(mean_pool(h, attention_mask)), -1)

        def gradient(delta: torch.Tensor) -> torch.Tensor:
            delta = delta.detach().requires_grad_(True)
            with torch.enable_grad():
                current = F.log_softmax(proxy(mean_pool(h + delta, attention_mask)), -1)
                kl = F.kl_div(current, reference, log_target=True, reduction="sum")
                (grad,) = torch.autograd.grad(kl, delta)
            return grad

        return gradient

    def noise_scale(self, input_ids: torch.Tensor) -> torch.Tensor:
        """s_i = s_min + (1 − s_min)(1 − w_t(i))."""
        return self.p.s_min + (1 - self.p.s_min) * (1 - self.importance[input_ids])

    def perturb(self, h, attention_mask, input_ids):
        delta = self.optimal_offset(h, attention_mask, input_ids)
        z = sample_dchi(tuple(h.shape[:-1]), h.shape[-1], self.p.eta, self.np_rng, self.torch_rng).to(h.dtype)
        released = h + delta + self.noise_scale(input_ids).unsqueeze(-1).to(h.dtype) * z
        return torch.where(real_tokens(attention_mask), released, h)

    def noise_nll(self, released, clean):
        """η‖h̃ − h‖₂, the d_χ law with s(x) = 1 and δ = 0: the attacker's approximation (it does not know the victim's
        importance scale s(x) ∈ [s_min, 1] nor the offset δ, ‖δ‖ ≤ r)."""
        return self.p.eta * (released - clean).norm(dim=-1)

    def guarantee(self, releases: int = 1, max_length: int = 64) -> Guarantee:
        return privtune_guarantee(self.p, releases, self.params(), proxy_used=self.proxy is not None)

    def params(self):
        return {**privtune_params(self.p), "k": self.graph.k, "n_hops": self.graph.n_hops}
