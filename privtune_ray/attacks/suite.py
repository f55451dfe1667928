"""The attack suite of a run: the attacker's auxiliary data, its fitted attacks, and rounds of attacks.

The attacker (SPEC §3) owns public auxiliary text disjoint from the victims' data. It pushes that text
through the known bottom and **its own copy of the known mechanism** (same parameters, its own noise
seed; PrivTune's importance weights fitted on the auxiliary text, since the device's data is private),
fits every attack on those observations, then attacks the victims' messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..config import AttackConfig, Config
from ..data.batching import TokenizedSplit, tokenize_split
from ..data.registry import get_spec, load_split
from ..errors import ConfigError, DataError
from ..mechanisms import build_mechanism
from ..models.anchors import load_or_build_anchors
from ..models.split import SplitModel
from . import ATTACKS, GRADIENT_ATTACKS
from .base import Attack, AttackContext
from .observations import Observations, observe

ATTACKER_SEED_OFFSET = 1_000_003  # the attacker's mechanism copy draws noise independent of the devices'


def attack_names(cfg: AttackConfig, attributes: tuple[str, ...], labelled: bool = True) -> list[str]:
    """The configured attacks on the uploads with ``auto`` expanded: every attack, ``aia_probe`` only where there are
    attributes, ``aia_label`` only where samples have class labels (not generation); never ``GRADIENT_ATTACKS``
    (they read what a device returns: ``gradient_matching.build_gradient_matching``)."""
    names = []
    skip = ({"aia_probe"} if not attributes else set()) | ({"aia_label"} if not labelled else set())
    for name in cfg.names:
        expanded = [n for n in ATTACKS if n not in skip] if name == "auto" else [name]
        names.extend(n for n in expanded if n not in names and n not in GRADIENT_ATTACKS)
    return names


def probe_attributes(cfg: AttackConfig, dataset: str) -> tuple[str, ...]:
    """The private attributes ``aia_probe`` targets; an error if the dataset lacks one that is asked for."""
    available = get_spec(dataset).attributes
    wanted = tuple(cfg.attributes) if cfg.attributes is not None else available
    missing = [a for a in wanted if a not in available]
    if missing or ("aia_probe" in cfg.names and not wanted):
        raise DataError(
            f"attack aia_probe needs a private attribute, and dataset {dataset!r} has "
            f"{', '.join(available) if available else 'none'}{' (asked for: ' + ', '.join(missing) + ')' if missing else ''}: "
            f"attack blog (gender, age_group) or trustpilot (gender, born_before_1960), or drop aia_probe from attack.names"
        )
    return wanted


def disjoint_aux(aux: TokenizedSplit, victims_texts: list[str]) -> tuple[TokenizedSplit, int]:
    """``aux`` without any sentence whose text is also a victim's; returns it and how many were dropped."""
    victims = set(victims_texts)
    keep = [i for i, t in enumerate(aux.texts) if t not in victims]
    if not keep:
        raise DataError(
            "the auxiliary set is entirely made of victims' sentences: choose another attack.aux_split or aux_dataset"
        )
    return aux.subset(np.asarray(keep)), len(aux) - len(keep)


def carve_aux(train: TokenizedSplit, n: int, seed: int) -> tuple[TokenizedSplit, TokenizedSplit]:
    """Split the training data into (auxiliary, remaining): the attacker's public share is not trained on."""
    if n >= len(train):
        raise ConfigError(
            f"attack.aux_samples={n} would take the whole training split ({len(train)} sentences) and leave the devices "
            f"nothing: lower attack.aux_samples or set attack.aux_split/aux_dataset to other data"
        )
    order = np.random.default_rng(seed).permutation(len(train))
    return train.subset(np.sort(order[:n])), train.subset(np.sort(order[n:]))


def load_aux(cfg: Config, tokenizer, victims_dataset: str, victims_split: str) -> TokenizedSplit:
    """The attacker's auxiliary sentences from ``attack.aux_dataset``/``aux_split`` (not the victims' split)."""
    dataset = cfg.attack.aux_dataset or cfg.data.dataset
    if (dataset, cfg.attack.aux_split) == (victims_dataset, victims_split):
        raise ConfigError(
            f"attack.aux_split={cfg.attack.aux_split!r} of {dataset!r} is the victims' own data: the attacker's auxiliary "
            f"set must be disjoint from it; choose another split (e.g. train) or attack.aux_dataset"
        )
    raw = load_split(
        dataset,
        cfg.attack.aux_split,
        cfg.data.data_dir,
        hub_fallback=cfg.data.hub_fallback,
        max_samples=cfg.attack.aux_samples,
        seed=cfg.seed + 17,
    )
    return tokenize_split(raw, tokenizer, cfg.model.max_length, attributes=get_spec(dataset).attributes)


@dataclass
class AttackSuite:
    ctx: AttackContext
    attacks: list[Attack]
    fit_s: dict[str, float] = field(default_factory=dict)
    aux_size: int = 0
    aux_dropped: int = 0

    @classmethod
    def fit_on(
        cls,
        cfg: Config,
        split: SplitModel,
        tokenizer,
        model_id: str,
        aux: TokenizedSplit,
        dataset: str,
        victims_texts: list[str] = (),
        log=print,
    ) -> AttackSuite:
        """Build the configured attacks and fit them on ``aux`` through the attacker's copy of the mechanism."""
        attributes = probe_attributes(cfg.attack, dataset)
        aux, dropped = disjoint_aux(aux, list(victims_texts))
        anchors = load_or_build_anchors(split.bottom, tokenizer, model_id)
        ctx = AttackContext(split.bottom, tokenizer, anchors, cfg.attack, seed=cfg.seed)
        labelled = get_spec(dataset).task == "classification"
        attacks = [a for name in attack_names(cfg.attack, attributes, labelled) for a in ATTACKS[name](ctx, attributes)]
        mechanism = build_mechanism(cfg.mechanism, split, tokenizer, model_id, seed=cfg.seed + ATTACKER_SEED_OFFSET)
        mechanism.fit(aux)
        aux_obs = observe(split.bottom, mechanism, aux, tokenizer.pad_token_id)
        suite = cls(ctx, attacks, aux_size=len(aux), aux_dropped=dropped)
        for attack in attacks:
            start = time.perf_counter()
            attack.fit(aux_obs)
            suite.fit_s[attack.name] = time.perf_counter() - start
            log(
                f"privtune-ray: fitted {attack.name} on {len(aux)} auxiliary sentences ({suite.fit_s[attack.name]:.1f} s)"
            )
        return suite

    def run(self, victims: Observations) -> list[dict]:
        """One round: every attack on ``victims``; one row per attack with its scores and seconds."""
        if len(victims) == 0:
            raise DataError("no victim messages to attack: the sample is empty (raise attack.victim_samples)")
        rows = []
        for attack in self.attacks:
            start = time.perf_counter()
            scores = attack.run(victims)
            rows.append(
                {
                    "attack": attack.name,
                    "kind": attack.kind,
                    **scores,
                    "seconds": time.perf_counter() - start,
                    "fit_s": self.fit_s.get(attack.name, 0.0),
                }
            )
        return rows

    def describe(self) -> dict:
        return {
            "aux_sentences": self.aux_size,
            "aux_dropped_as_victims": self.aux_dropped,
            **{a.name: a.describe() for a in self.attacks if a.describe()},
        }


def long_rows(rows: list[dict], **keys) -> list[dict]:
    """Rows of (``keys``, attack, kind, metric, value): one CSV schema for every attack's metrics."""
    return [
        {**keys, "attack": r["attack"], "kind": r["kind"], "metric": k, "value": float(v)}
        for r in rows
        for k, v in r.items()
        if k not in ("attack", "kind")
    ]


def headline(rows: list[dict]) -> dict:
    """The numbers a privacy–utility plot needs: the best attack of each kind."""
    inversion = [r["asr_top1"] for r in rows if r["kind"] == "inversion"]
    attribute = [r["advantage"] for r in rows if r["kind"] == "attribute"]
    return {
        "max_eia_asr_top1": max(inversion) if inversion else None,
        "max_aia_advantage": max(attribute) if attribute else None,
    }


class VictimSample:
    """The latest ``size`` sentences the cloud received, with their ground truth, for the next attack round."""

    def __init__(self, size: int | None):
        self.size = size
        self.parts: list[Observations] = []

    def add(self, obs: Observations) -> None:
        self.parts.append(obs)
        while self.size is not None and len(self.parts) > 1 and sum(map(len, self.parts[1:])) >= self.size:
            self.parts.pop(0)

    def take(self) -> Observations:
        obs = Observations.concat(self.parts)
        self.parts = []
        if self.size is not None and len(obs) > self.size:
            obs = obs.subset(np.arange(len(obs) - self.size, len(obs)))
        return obs
