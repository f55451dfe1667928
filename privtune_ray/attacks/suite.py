"""The attack suite of a run: the attacker's auxiliary data, its fitted attacks, and rounds of attacks.

The attacker (SPEC §3) owns public auxiliary text disjoint from the victims' data. It pushes that text
through the known bottom and, as the **adaptive** attacker, **its own copy of the known mechanism** (same
parameters, its own noise seed; PrivTune's importance weights fitted on the auxiliary text, since the device's data
is private), fits every attack on those observations, then attacks the victims' messages. The **static** attacker
(``attack.attackers``) fits the same attacks on the clean bottom outputs of the same text: it does not model the
noise (the nearest-neighbour attack of the paper's lineage, and inverters trained without the mechanism).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import AttackConfig, Config
from ..data.batching import TokenizedSplit
from ..data.registry import get_spec
from ..errors import DataError
from ..mechanisms.base import Mechanism
from ..mechanisms.registry import build_mechanism
from ..models.anchors import load_or_build_anchors
from ..models.split import SplitModel
from ..seeding import isolated_rng
from .base import Attack, AttackContext
from .observations import Observations, ObservationStream
from .params import STRONG_ATTACKS, probe_attributes
from .public_text import corpus_counts, disjoint_aux
from .registry import ATTACKS, GRADIENT_ATTACKS

ATTACKER_SEED_OFFSET = 1_000_003  # the attacker's mechanism copy draws noise independent of the devices'


def attack_names(cfg: AttackConfig, attributes: tuple[str, ...], labelled: bool = True) -> list[str]:
    """The configured attacks on the uploads with ``auto`` expanded: every attack, ``aia_probe`` only where there are
    attributes, ``aia_label`` only where samples have class labels (not generation); never ``GRADIENT_ATTACKS``
    (they read what a device returns: ``gradient_matching.build_gradient_matching``)."""
    names: list[str] = []
    skip = ({"aia_probe"} if not attributes else set()) | ({"aia_label"} if not labelled else set())
    for name in cfg.names:
        if name in ("auto", "all"):  # auto: the quick set; all: with the strong inverters (STRONG_ATTACKS) too
            expanded = [n for n in ATTACKS if n not in skip and (name == "all" or n not in STRONG_ATTACKS)]
        else:
            expanded = [name]
        names.extend(n for n in expanded if n not in names and n not in GRADIENT_ATTACKS)
    return names


@dataclass
class AttackSuite:
    ctx: AttackContext
    attacks: list[Attack]
    fit_s: dict[str, float] = field(default_factory=dict)
    aux_size: int = 0
    aux_dropped: int = 0
    corpora: dict[str, int] = field(default_factory=dict)  # sentences per public corpus, after the drop
    budget: dict = field(default_factory=dict)  # the attacker's training budget (attack_budget)
    peak_rss_mb: float | None = None  # the process's peak resident memory once the attacks were fitted

    @classmethod
    @isolated_rng()
    def fit_on(
        cls,
        cfg: Config,
        split: SplitModel,
        tokenizer,
        model_id: str,
        aux: TokenizedSplit,
        dataset: str,
        victims_texts: Sequence[str] = (),
        log=print,
        adaptive_split: SplitModel | None = None,
    ) -> AttackSuite:
        """Build the configured attacks and fit them on ``aux`` through the attacker's copy of the mechanism.

        ``split`` is the pretrained model cut where the uploads leave the device. ``adaptive_split``, where given, is
        what the adaptive attacker runs in its place because the cloud holds more than the pretrained weights
        (GuardedTuning: the round's trained A_b, which it aggregates and sends down); the static attacker keeps
        ``split``. Anchors of a trained bottom are built afresh, never cached. With ``design.bits`` set the adaptive
        attacker's own observations go through the same b-bit round trip as the uploads."""
        torch.manual_seed(cfg.seed + ATTACKER_SEED_OFFSET)  # the inverters' init and dropout: the same wherever it runs
        attributes = probe_attributes(cfg.attack, dataset)
        aux, dropped = disjoint_aux(aux, list(victims_texts))
        labelled = get_spec(dataset).task == "classification"
        contexts: dict[int, AttackContext] = {}
        suite = None
        for attacker in cfg.attack.attackers:
            through = adaptive_split if attacker == "adaptive" and adaptive_split is not None else split
            if id(through) not in contexts:
                anchors = load_or_build_anchors(through.bottom, tokenizer, model_id, cache=through is split)
                contexts[id(through)] = AttackContext(through.bottom, tokenizer, anchors, cfg.attack, seed=cfg.seed)
            ctx = contexts[id(through)]
            suite = suite or cls(
                ctx,
                [],
                aux_size=len(aux),
                aux_dropped=dropped,
                corpora=corpus_counts(aux),
                budget=attack_budget(cfg.attack),
            )
            if attacker == "adaptive":
                seed = cfg.seed + ATTACKER_SEED_OFFSET
                mechanism = build_mechanism(cfg.mechanism, through, tokenizer, model_id, seed=seed)
                mechanism.fit(aux)
            else:  # static: the clean bottom outputs
                mechanism = Mechanism(cfg.seed)
            bits = cfg.design.bits if attacker == "adaptive" else None  # what the victims' uploads went through too
            # observed on the fly, a minibatch at a time: fresh noise every epoch, memory ∝ one minibatch
            aux_obs = ObservationStream(
                through.bottom,
                mechanism,
                aux,
                tokenizer.pad_token_id,
                bits=bits,
                fresh_noise=cfg.attack.fresh_noise,
                seed=cfg.seed + ATTACKER_SEED_OFFSET,
            )
            for name in attack_names(cfg.attack, attributes, labelled):
                for attack in ATTACKS[name](ctx, attributes):
                    attack.attacker = attacker
                    start = time.perf_counter()
                    attack.fit(aux_obs)
                    key = suite.key(attack)
                    suite.fit_s[key] = time.perf_counter() - start
                    suite.attacks.append(attack)
                    log(f"privtune-ray: fitted {key} on {len(aux)} auxiliary sentences ({suite.fit_s[key]:.1f} s)")
        assert suite is not None, "attack.attackers is never empty (config)"
        suite.peak_rss_mb = peak_rss_mb()
        return suite

    def key(self, attack: Attack) -> str:
        """The attack's name, tagged ``name@attacker`` where its attacker model is not the first's (``by_name``)."""
        primary = self.attacks[0].attacker if self.attacks else attack.attacker
        return attack.name if attack.attacker == primary else f"{attack.name}@{attack.attacker}"

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
                    "attacker": attack.attacker,
                    "kind": attack.kind,
                    **scores,
                    "seconds": time.perf_counter() - start,
                    "fit_s": self.fit_s.get(self.key(attack), 0.0),
                }
            )
        return rows

    def describe(self) -> dict:
        """The attacker as the summary records it: its public text (per corpus), what was dropped as the victims',
        its training budget and the peak resident memory (MiB) once fitted."""
        return {
            "aux_sentences": self.aux_size,
            "aux_dropped_as_victims": self.aux_dropped,
            "aux_corpora": self.corpora,
            "budget": self.budget,
            "peak_rss_mb": self.peak_rss_mb,
            **{a.name: a.describe() for a in self.attacks if a.describe()},
        }


def attack_budget(cfg: AttackConfig) -> dict:
    """The attacker's training budget: its learned attacks' epochs, minibatch, learning rate and inverter depth, and
    whether each epoch draws fresh noise (``ObservationStream``)."""
    return {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "inverter_layers": cfg.inverter_layers,
        "probe_epochs": cfg.probe_epochs,
        "fresh_noise_each_epoch": cfg.fresh_noise,
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def by_name(rows: list[dict]) -> dict[str, dict]:
    """A round's rows keyed by attack name, tagged ``name@attacker`` where the attacker model is not the first's."""
    first = rows[0].get("attacker", "adaptive") if rows else "adaptive"
    tag = lambda r: "" if r.get("attacker", "adaptive") == first else f"@{r['attacker']}"  # noqa: E731
    return {f"{r['attack']}{tag(r)}": r for r in rows}


LABELS = ("attack", "attacker", "kind")  # a row's labels; every other field is a metric


def long_rows(rows: list[dict], **keys) -> list[dict]:
    """Rows of (``keys``, attack, attacker, kind, metric, value): one CSV schema for every attack's metrics."""
    return [
        {**keys, **{k: r.get(k, "adaptive") for k in LABELS}, "metric": k, "value": float(v)}
        for r in rows
        for k, v in r.items()
        if k not in LABELS
    ]


def headline(rows: list[dict]) -> dict:
    """The numbers a privacy–utility plot needs: the best attack of each kind, for the first attacker model, and
    the best inversion per attacker model (``max_eia_asr_top1_by_attacker``)."""
    attackers = list(dict.fromkeys(r.get("attacker", "adaptive") for r in rows))

    def best(kind: str, metric: str, attacker: str):
        values = [r[metric] for r in rows if r["kind"] == kind and r.get("attacker", "adaptive") == attacker]
        return max(values) if values else None

    first = attackers[0] if attackers else "adaptive"
    return {
        "max_eia_asr_top1": best("inversion", "asr_top1", first),
        "max_aia_advantage": best("attribute", "advantage", first),
        "max_eia_asr_top1_by_attacker": {a: best("inversion", "asr_top1", a) for a in attackers},
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
