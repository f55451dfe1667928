"""What the cloud receives, checked at the boundary: every field and every row of the decoded payloads, for
every mechanism of the split designs and every channel of GuardedTuning (padding rows included)."""

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from privtune_ray.config import MechanismConfig, load_config
from privtune_ray.data import load_split
from privtune_ray.data.batching import collate, tokenize_split
from privtune_ray.designs.guarded import Blocks, ClientAdapters, GuardedClient, GuardedLayout, MiddleServer
from privtune_ray.errors import NonFiniteRelease
from privtune_ray.mechanisms.activation_dp import LaplaceActivation
from privtune_ray.mechanisms.base import Mechanism
from privtune_ray.mechanisms.registry import MECHANISMS, build_mechanism
from privtune_ray.message import Message, tensor_from_bytes
from privtune_ray.models import resolve_model
from privtune_ray.models.split import BottomModel, family_of, split_model
from privtune_ray.training.client import SplitClient
from privtune_ray.training.server import build_optimizer

MECHANISM_CONFIGS = {
    "none": MechanismConfig(name="none"),
    "dchi": MechanismConfig(name="dchi", eta=5.0),
    "gaussian": MechanismConfig(name="gaussian", noise_multiplier=1.0, clip_norm=1.0),
    "laplace": MechanismConfig(name="laplace", noise_multiplier=1.0, clip_norm=1.0),
    "privtune": MechanismConfig(name="privtune", eta=5.0),
}


@pytest.fixture(scope="module")
def split(minilm):
    return split_model(minilm, 2)


@pytest.fixture(scope="module")
def dev(tokenizer):
    return tokenize_split(load_split("sst2", "dev", max_samples=48, seed=0), tokenizer, 64)


def _twin_batches(dev, tokenizer, n=12):
    """A batch of sentences of mixed lengths and a twin with the same mask whose real tokens (all but [CLS] and
    [SEP]) are other words: every padding row of h at m = 2 differs between them."""
    batch = collate(dev, np.arange(n), tokenizer.pad_token_id)
    twin = copy.deepcopy(batch)
    g = torch.Generator().manual_seed(3)
    inner = (
        batch.attention_mask.bool()
        & (batch.input_ids != tokenizer.cls_token_id)
        & (batch.input_ids != tokenizer.sep_token_id)
    )
    twin.input_ids[inner] = torch.randint(2000, 20000, (int(inner.sum()),), generator=g)
    assert (batch.attention_mask == 0).any(dim=1).float().mean() > 0.5  # most samples have padding rows
    return batch, twin


def _received(payload: bytes) -> Message:
    """The message as the cloud decodes it, after checking the payload holds only the real rows."""
    msg = Message.from_bytes(payload)
    stored = st_load(payload)
    rows = stored["hidden"].shape[0] if "hidden" in stored else stored["hidden_scale"].shape[0]
    assert rows == int(msg.attention_mask.sum()), "the payload carries rows beyond the real tokens"
    return msg


@pytest.mark.parametrize("name", sorted(MECHANISMS))
@pytest.mark.parametrize("bits", [None, 4])
def test_split_uploads_carry_nothing_at_padding_rows(split, dev, tokenizer, name, bits):
    """Every field the cloud decodes from a split upload: h̃'s padding rows are zero whatever the sentence,
    labels are the class ids, no token ids travel."""
    mech = build_mechanism(MECHANISM_CONFIGS[name], split, tokenizer, resolve_model("minilm"), seed=0)
    batch, twin = _twin_batches(dev, tokenizer)
    clean = split.bottom(batch.input_ids, batch.attention_mask)
    pads = ~batch.attention_mask.bool()
    assert not torch.allclose(clean[pads], split.bottom(twin.input_ids, twin.attention_mask)[pads])  # they would leak
    received = [_received(SplitClient(split.bottom, mech, bits=bits).encode(b).to_bytes()) for b in (batch, twin)]
    for msg, b in zip(received, (batch, twin), strict=True):
        assert not msg.hidden[pads].any()
        assert torch.isfinite(msg.hidden).all()
        assert torch.equal(msg.attention_mask, b.attention_mask) and torch.equal(msg.labels, b.labels)
        assert set(msg.meta) <= {"mechanism"} and not msg.targets_uploaded
    if name != "none":  # the real rows are perturbed (not the clean h)
        assert not torch.allclose(received[0].hidden[~pads], clean[~pads], atol=1e-3)


@pytest.mark.parametrize("design", ["online", "gradfree"])
def test_guarded_channels_carry_nothing_at_padding_rows(minilm, dev, tokenizer, design):
    """A1 ↑, A2 ↓, ∂ℓ/∂A2 ↑ and ∂ℓ/∂A1 ↓ (online), decoded as received: padding rows zero for any sentence."""
    lay = GuardedLayout.check(6, 2, 1)
    model = copy.deepcopy(minilm)
    bottom = BottomModel(family_of(model), model, 2)
    client = GuardedClient(design, bottom, ClientAdapters(model, lay, "classification"), dcor_weight=0.5, bits=None)
    middle = Blocks(copy.deepcopy(model), lay.middle)
    server = MiddleServer(
        middle, *build_optimizer(middle, load_config(None).train, 10), trains=design == "online", bits=None
    )
    batch, twin = _twin_batches(dev, tokenizer)
    pads = ~batch.attention_mask.bool()
    for key, b in enumerate((batch, twin)):
        channels = {"act_up": _received(client.upload(b)).hidden}
        a2 = server.forward(key, client.upload(b), train=True)
        channels["act_down"] = tensor_from_bytes(a2)
        _, grad_up, _ = client.top_step(b, a2)
        if design == "online":
            channels["grad_up"] = tensor_from_bytes(grad_up)
            channels["grad_down"] = tensor_from_bytes(server.backward(key, grad_up))
        for channel, x in channels.items():
            assert x.shape[:2] == b.attention_mask.shape, channel
            assert not x[pads].any(), f"{design} {channel}: a padding row carries values"
            assert x[~pads].abs().sum() > 0, channel


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_online_label_defence_is_what_the_cloud_receives(minilm, dev, tokenizer, sigma):
    """design.grad_up_clip_norm C and grad_up_noise_multiplier σ: the ∂ℓ/∂A2 the cloud decodes is each sample's
    exact gradient scaled to norm ≤ C, plus noise of std σ·C on its real rows only (padding rows stay zero)."""
    clip = 0.05
    lay = GuardedLayout.check(6, 2, 1)
    model = copy.deepcopy(minilm)
    bottom = BottomModel(family_of(model), model, 2)
    adapters = ClientAdapters(model, lay, "classification")
    exact_client = GuardedClient("online", bottom, adapters, dcor_weight=0.5, bits=None)
    client = GuardedClient("online", bottom, adapters, 0.5, None, None, grad_clip=clip, grad_sigma=sigma)
    middle = Blocks(copy.deepcopy(model), lay.middle)
    server = MiddleServer(middle, *build_optimizer(middle, load_config(None).train, 10), trains=True, bits=None)
    batch, _ = _twin_batches(dev, tokenizer)
    pads = ~batch.attention_mask.bool()
    a2 = server.forward(0, client.upload(batch), train=False)
    torch.manual_seed(0)
    _, exact, _ = exact_client.top_step(batch, a2)
    torch.manual_seed(0)  # the same dropout: only the defence differs
    _, sent, _ = client.top_step(batch, a2, noise_seed=7)
    exact, sent = tensor_from_bytes(exact), tensor_from_bytes(sent)
    norms = exact.flatten(1).norm(dim=1)
    assert (norms > clip).any(), "the clip must bind for this test to check it"
    clipped = exact * torch.clamp(clip / norms, max=1.0).view(-1, 1, 1)
    assert not sent[pads].any()
    noise = (sent - clipped)[~pads]
    if sigma == 0:
        assert torch.allclose(sent, clipped, atol=1e-7)
        assert (sent.flatten(1).norm(dim=1) <= clip * (1 + 1e-5)).all()
    else:
        assert abs(float(noise.std()) / (sigma * clip) - 1) < 0.05 and abs(float(noise.mean())) < 0.05 * sigma * clip
        torch.manual_seed(0)
        _, again, _ = client.top_step(batch, a2, noise_seed=8)
        assert not torch.allclose(tensor_from_bytes(again), sent)  # fresh noise per (device, round) seed


def _probe_accuracy(train_x, train_y, test_x, test_y, steps=300) -> float:
    """Held-out accuracy of a logistic-regression probe (full-batch Adam on standardised features)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.shape[1], 2)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
    return float((probe(test_x).argmax(-1) == test_y).float().mean())


def test_a_probe_on_the_released_message_learns_no_more_than_its_real_rows(split, tokenizer):
    """Label probes on what the cloud receives. On the padding rows alone: the majority class, no more (they
    read 70 % when padding rows went up unperturbed). On the whole message: no better than on the mechanism's
    own noised real rows."""
    data = tokenize_split(load_split("sst2", "train", max_samples=900, seed=1), tokenizer, 64)
    mech = build_mechanism(MechanismConfig(name="dchi", eta=2.0), split, tokenizer, resolve_model("minilm"), seed=0)
    client = SplitClient(split.bottom, mech)
    real_feats, pad_feats = [], []
    for start in range(0, len(data), 50):  # unbucketed batches: most samples have padding rows
        msg = Message.from_bytes(
            client.encode(
                collate(data, np.arange(start, min(start + 50, len(data))), tokenizer.pad_token_id)
            ).to_bytes()
        )
        real = msg.attention_mask.unsqueeze(-1).float()
        real_feats.append((msg.hidden * real).sum(1) / real.sum(1))
        pad_feats.append((msg.hidden * (1 - real)).sum(1) / (1 - real).sum(1).clamp_min(1))
    real_x, pad_x = torch.cat(real_feats), torch.cat(pad_feats)
    y = torch.as_tensor(data.labels)
    cut = 600
    majority = max(float(y[cut:].float().mean()), 1 - float(y[cut:].float().mean()))
    on_padding = _probe_accuracy(pad_x[:cut], y[:cut], pad_x[cut:], y[cut:])
    on_real = _probe_accuracy(real_x[:cut], y[:cut], real_x[cut:], y[cut:])
    whole = torch.cat([real_x, pad_x], dim=1)
    on_message = _probe_accuracy(whole[:cut], y[:cut], whole[cut:], y[cut:])
    assert on_padding <= majority + 1e-6, (on_padding, majority)
    assert on_message <= on_real + 0.01, (on_message, on_real)


def test_laplace_noise_is_finite_at_the_extremes_of_its_uniform(monkeypatch):
    """The sampler's most extreme uniform draws (torch.rand's 0, which once gave log(0) = −inf; uniform_'s
    lower bound) still give finite noise."""
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.zeros(*shape))
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, a=0.0, b=1.0, generator=None: self.fill_(a))
    noise = LaplaceActivation(noise_multiplier=1.0, clip_norm=1.0).noise((4, 8))
    assert torch.isfinite(noise).all()
    assert noise.abs().max() > 30  # the far tail, b·log(1/ε₆₄) ≈ 36·b, is still drawn


def test_a_non_finite_release_fails_loudly_and_uploads_nothing(split, dev, tokenizer):
    class Broken(Mechanism):
        name = "broken"

        def perturb(self, h, attention_mask, input_ids):
            return h.masked_fill(attention_mask.bool().unsqueeze(-1) & (torch.rand_like(h) < 0.001), float("nan"))

    batch, _ = _twin_batches(dev, tokenizer)
    with pytest.raises(NonFiniteRelease, match="'broken' produced .* non-finite"):
        SplitClient(split.bottom, Broken()).encode(batch)
