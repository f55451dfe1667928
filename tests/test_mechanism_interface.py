"""A new mechanism is one class and one registry line (issue 36): added here, outside the package, it runs from a
YAML config under `train` and `simulate`, and what the cloud receives is its release.

``UniformBox`` adds noise drawn uniformly from [-b, b] to every value of h, b = ``noise_multiplier``; its keys are
the existing ``noise_multiplier`` (its ``Params``), its statement says plainly that it proves nothing.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from privtune_ray.checks import check_config
from privtune_ray.config import VariantParams, load_config, require
from privtune_ray.drivers.simulate import run_simulation
from privtune_ray.drivers.train import run_training
from privtune_ray.errors import ConfigError
from privtune_ray.mechanisms.base import Mechanism
from privtune_ray.mechanisms.guarantees import Guarantee, config_guarantee
from privtune_ray.mechanisms.registry import MECHANISMS
from privtune_ray.training.server import TopServer

ROOT = Path(__file__).parents[1]
quiet = lambda *_: None  # noqa: E731


@dataclass
class UniformBoxParams(VariantParams):
    noise_multiplier: float  # b: the half-width of the box

    def validate(self, key: str) -> None:
        require(self.noise_multiplier > 0, f"{key}.noise_multiplier", "must be > 0")


class UniformBox(Mechanism):
    name = "uniform_box"
    Params = UniformBoxParams
    released: list[torch.Tensor] = []  # what left the devices, for the boundary check

    @classmethod
    def from_params(cls, params, split, tokenizer, model_id, seed=0):
        mech = cls(seed)
        mech.b = params.noise_multiplier
        return mech

    def perturb(self, h, attention_mask, input_ids):
        noise = (torch.rand(h.shape, generator=self.torch_rng) * 2 - 1) * self.b
        out = h + noise
        UniformBox.released.append(out * attention_mask.unsqueeze(-1))
        return out

    @classmethod
    def params_guarantee(cls, params, releases, max_length):
        return Guarantee(
            kind="none", statement=f"uniform noise in [-{params.noise_multiplier:g}, +]: no formal guarantee"
        )


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """The one registry line, and a YAML config naming the mechanism (extending the CI designs' config)."""
    monkeypatch.setitem(MECHANISMS, "uniform_box", UniformBox)
    UniformBox.released = []
    path = tmp_path / "uniform.yaml"
    path.write_text(
        f"extends: {ROOT / 'simulations' / 'ci' / 'sst2_designs.yaml'}\n"
        "mechanism: {name: uniform_box, noise_multiplier: 0.25}\n"
        "attack: {enabled: false}\n"
        "data: {max_train_samples: 48, max_eval_samples: 16}\n"
        "simulation: {devices: 4, devices_per_round: 2, local_batch_size: 4, rounds: 2, deadline_s: null}\n"
        "train: {max_steps: 2, batch_size: 8, progress: false}\n"
    )
    return path


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_a_mechanism_registered_outside_the_package_runs_from_yaml(registered, command, tmp_path, monkeypatch):
    received: list[torch.Tensor] = []
    original = TopServer.accumulate_samples

    def spy(self, msg):
        received.append(msg.hidden.clone())
        return original(self, msg)

    monkeypatch.setattr(TopServer, "accumulate_samples", spy)
    cfg = load_config(str(registered))
    check_config(cfg)
    runner = run_training if command == "train" else run_simulation
    run = runner(cfg, out=tmp_path / "run", log=quiet)
    summary = (run / "summary.json").read_text()
    assert '"mechanism": "uniform_box"' in summary and "no formal guarantee" in summary
    # at the boundary: every message the cloud trained on is one of the mechanism's releases (padding rows zero)
    assert received and UniformBox.released
    for hidden in received:
        assert any(r.shape == hidden.shape and torch.allclose(r, hidden, atol=1e-6) for r in UniformBox.released)


def test_its_keys_are_checked_by_its_own_params_and_its_statement_is_its_own(registered):
    with pytest.raises(ConfigError, match="mechanism.noise_multiplier"):
        check_config(load_config(str(registered), ["mechanism.noise_multiplier=-1"]))
    g = config_guarantee(load_config(str(registered)).mechanism, releases=2, max_length=64)
    assert g.kind == "none" and g.statement.startswith("uniform noise in [-0.25")


def test_an_unregistered_name_is_refused_naming_the_registered_ones(registered):
    with pytest.raises(ConfigError, match=r"unknown mechanism 'uniform_cube'.*'uniform_box'"):
        check_config(load_config(str(registered), ["mechanism.name=uniform_cube"]))
