"""Typed run configuration: dataclasses loaded from YAML, with ``--set key=value`` overrides.

Every key is checked: an unknown key or a value of the wrong type or range raises one
:class:`ConfigError` that names the full dotted key and the fix. This module is the schema alone and imports
no feature package (no torch): it checks types, finiteness and the shared keys' ranges; names that only a
registry knows (dataset, partitioner, mechanism, attacks, design) and the ranges of a variant's own keys (its
``VariantParams`` dataclass beside its code) are checked by :func:`privtune_ray.checks.check_config`, which every
command that runs something calls next.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    """Which pretrained model, and where it is split."""

    name: str = "all-MiniLM-L6-v2"  # HF id, local path, or the embedded default
    split_depth: int = 2  # m: blocks on the device (0 = embeddings only)
    max_length: int = 64  # tokens per sample after truncation
    task: str = "classification"  # "classification" or "causal-lm"
    # causal-lm: where the LM head and the loss run. "device" (U-shaped: the cloud returns the top's last hidden
    # states and receives their gradient; no token crosses); "cloud" uploads the token targets (the answer
    # text) with h̃, and the summary names that leak.
    lm_head: str = "device"

    def validate(self, key: str) -> None:
        require(self.split_depth >= 0, f"{key}.split_depth", "must be >= 0 (number of blocks on the device)")
        require(self.max_length >= 2, f"{key}.max_length", "must be >= 2 tokens")
        require(self.task in ("classification", "causal-lm"), f"{key}.task", "must be 'classification' or 'causal-lm'")
        require(
            self.lm_head in ("device", "cloud"),
            f"{key}.lm_head",
            "must be 'device' (U-shaped: no token leaves the device) or 'cloud' (uploads the token targets)",
        )


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how much of it a run uses."""

    dataset: str = "sst2"
    data_dir: str | None = None  # None: $PRIVTUNE_DATA_DIR, else ../shared/data beside the project
    train_split: str = "train"
    eval_split: str = "dev"
    max_train_samples: int | None = None  # None: the whole split
    max_eval_samples: int | None = None
    hub_fallback: bool = True  # try the public hub copy when the local files are missing and HF_HUB_OFFLINE is unset

    def validate(self, key: str) -> None:
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{key}.{name}", "must be a positive number of samples or null")


@dataclass
class MechanismConfig:
    """The privacy mechanism a device applies to h before upload (``privtune_ray/mechanisms/``).

    This section is the YAML schema and holds the defaults; each mechanism reads its keys through its own parameter
    dataclass beside its code, which checks their ranges (``DChiParams``, ``ClippedNoiseParams``,
    ``PrivTuneParams``). Keys are shared where the meaning is: ``eta`` is η of d_χ noise for both ``dchi`` and
    ``privtune``.
    """

    name: str = "none"  # none | dchi | gaussian | laplace | privtune
    eta: float = 50.0  # d_χ η (per unit L2 distance): mean noise radius d/η
    noise_multiplier: float = 1.0  # gaussian: σ (std σ·C); laplace: λ (scale λ·C)
    clip_norm: float = 12.0  # C: row norm bound (L2 for gaussian, L1 for laplace)
    delta: float = 1.0e-5  # δ of the (ε, δ) statement
    k: int = 10  # PrivTune: neighbours per token in the k-NN graph
    n_hops: int = 3  # PrivTune: n, the ring N_n(v) the target comes from
    candidates: int = 8  # PrivTune: ring members kept per token (nearest to its anchor)
    radius: float = 2.0  # PrivTune: r, bound on ||δ_i||
    s_min: float = 0.5  # PrivTune: smallest noise scale
    pgd_steps: int = 10  # PrivTune: K
    pgd_step_size: float = 0.25  # PrivTune: α, fraction of r per step
    lambda_s: float = 1.0  # PrivTune: semantic preservation weight
    lambda_d: float = 1.0  # PrivTune: distributional validity weight
    lambda_p: float = 1.0  # PrivTune: prediction consistency weight (with proxy_head)
    proxy_head: bool = False  # PrivTune: train a proxy head on the device for prediction consistency
    importance: bool = True  # PrivTune: importance-scaled noise
    importance_samples: int | None = 20000  # PrivTune: device samples used for importance
    cache_dir: str | None = None  # PrivTune graph cache (None: $PRIVTUNE_CACHE_DIR or ~/.cache/privtune-ray)


@dataclass
class LoraConfig:
    """LoRA on the top model through peft (off: full fine-tuning of the top model)."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's attention and MLP projections

    def validate(self, key: str) -> None:
        require(self.r > 0, f"{key}.r", "must be a positive rank")
        require(self.alpha > 0, f"{key}.alpha", "must be positive")
        require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")


# The names of training/warm_start.OBJECTIVES and models/denoiser.DENOISERS (plus none), checked here without torch.
WARM_START_OBJECTIVES = ("hidden", "pooled")
DENOISER_KINDS = ("none", "mlp")


@dataclass
class WarmStartConfig:
    """Noise-aware warm start (``training/warm_start.py``): before the private fine-tune, the cloud adapts its top to
    the mechanism's output on **public** text through its own copy of the public mechanism; it costs no privacy.

    Source: ``dataset``/``split`` (None: the run's dataset), never the training or evaluation split (refused; a
    sentence of the source that is also a training or evaluation sentence is dropped). Objective (``objective``):
    ``hidden``: per-token MSE between the top's last hidden states on h̃ and the clean pretrained top's on h, over
    real tokens, normalised by the clean states' mean square; ``pooled``: 1 − cos between their mean-pooled
    sentence vectors. ``steps`` AdamW steps of ``batch_size`` sentences at ``lr`` (linear decay)."""

    enabled: bool = False
    dataset: str | None = None  # a key of the data registry; None: the run's dataset
    split: str = "test"  # SST-2's test split is unlabelled public in-domain text
    samples: int | None = None  # sentences of the source used (None: all)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1.0e-4
    objective: str = "hidden"  # hidden | pooled

    def validate(self, key: str) -> None:
        require(
            self.objective in WARM_START_OBJECTIVES,
            f"{key}.objective",
            f"unknown objective {self.objective!r}; choose one of {list(WARM_START_OBJECTIVES)}",
        )
        require(self.samples is None or self.samples >= 1, f"{key}.samples", "must be >= 1 or null")
        for name in ("steps", "batch_size"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        require(self.lr > 0, f"{key}.lr", "must be > 0")


@dataclass
class DenoiserConfig:
    """A cloud denoiser (``models/denoiser.py``): a trainable front block before the top's first block, trained with
    the top. ``mlp``: per token, h' = h̃ + W₂·GELU(W₁·LN(h̃)) of hidden width ``width``, W₂ = 0 at the start (the
    identity). ``pretrain_steps`` > 0: first pretrained on the warm-start source (``train.warm_start``'s dataset and
    split, public text) to predict h from h̃ (MSE over real tokens, normalised by the mean square of h)."""

    kind: str = "none"  # none | mlp
    width: int = 1024
    pretrain_steps: int = 0

    def validate(self, key: str) -> None:
        require(
            self.kind in DENOISER_KINDS,
            f"{key}.kind",
            f"unknown denoiser {self.kind!r}; choose one of {list(DENOISER_KINDS)}",
        )
        require(self.width >= 1, f"{key}.width", "must be >= 1")
        require(self.pretrain_steps >= 0, f"{key}.pretrain_steps", "must be >= 0")


@dataclass
class TrainConfig:
    """Optimisation of the top model (AdamW, linear warm-up then linear decay)."""

    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimiser steps (None: run all epochs)
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    length_bucketing: bool = True  # batch samples of similar length together (2.8x on SST-2, `make bench`)
    log_every: int = 10  # steps between rows of metrics.csv
    eval_every: int | None = None  # steps between dev evaluations (None: only at the end)
    checkpoint_every: int = 200  # steps between checkpoints a run can resume from
    threads: int | None = None  # torch intra-op threads (None: all cores)
    progress: bool = True  # progress bars on stderr
    max_new_tokens: int = 24  # generation: answer tokens trained on and generated at evaluation (greedy)
    device: str = "cpu"  # the top model's device in `train` and in-process `simulate`: cpu | cuda | auto (cuda if seen)
    lora: LoraConfig = field(default_factory=LoraConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    # the classification head's input: "token", the family's own read-out ([CLS], <s>, the last token), or "mean",
    # the mean of the top's last hidden states over real tokens (models.split.MeanPooledHead; a cloud-side lever)
    head_pooling: str = "token"
    # which of the top's parameters train (with lora.enabled: false): "all", or "bias", BitFit's biases plus the
    # task head (and a front denoiser); LoRA (lora.enabled) is the third choice
    trainable: str = "all"
    # the most samples one forward pass takes: a larger (logical, e.g. DP-SGD's Poisson) batch is sent and
    # backpropagated in pieces of this size (by length, with length_bucketing) and takes one optimiser step
    # (None: the whole batch at once)
    physical_batch_size: int | None = None

    def validate(self, key: str) -> None:
        require(self.head_pooling in ("token", "mean"), f"{key}.head_pooling", "must be 'token' or 'mean'")
        require(self.trainable in ("all", "bias"), f"{key}.trainable", "must be 'all' or 'bias' (BitFit)")
        require(
            not (self.trainable == "bias" and self.lora.enabled),
            f"{key}.trainable",
            "is 'bias' while train.lora.enabled is true: choose one, BitFit (trainable=bias) or LoRA",
        )
        require(
            self.physical_batch_size is None or self.physical_batch_size >= 1,
            f"{key}.physical_batch_size",
            "must be >= 1 or null",
        )
        require(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        require(self.max_steps is None or self.max_steps >= 1, f"{key}.max_steps", "must be >= 1 or null")
        require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        require(self.eval_batch_size >= 1, f"{key}.eval_batch_size", "must be >= 1")
        require(self.lr > 0, f"{key}.lr", "must be > 0")
        require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        require(0.0 <= self.warmup_ratio < 1.0, f"{key}.warmup_ratio", "must be in [0, 1)")
        require(self.log_every >= 1, f"{key}.log_every", "must be >= 1")
        require(self.eval_every is None or self.eval_every >= 1, f"{key}.eval_every", "must be >= 1 or null")
        require(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be >= 1")
        require(self.threads is None or self.threads >= 1, f"{key}.threads", "must be >= 1 or null")
        require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")
        require(self.device in ("cpu", "cuda", "auto"), f"{key}.device", "must be 'cpu', 'cuda' or 'auto'")
        self.lora.validate(f"{key}.lora")
        self.warm_start.validate(f"{key}.warm_start")
        self.denoiser.validate(f"{key}.denoiser")


@dataclass
class AttackConfig:
    """The cloud's attacks on what it receives (``privtune_ray/attacks/``, SPEC §3).

    The attacker fits on public auxiliary text pushed through the known bottom and its own copy of the
    known mechanism, then attacks a sample of the victims' messages (every ``every`` steps and at the end
    of ``train``; the dev split for ``privtune-ray attack``). An attack's own keys (``epochs``, ``probe_*``,
    ``opt_*``, ``keywords``) are read and range-checked by its parameter dataclass beside its code.
    """

    enabled: bool = False  # run the attacks during `privtune-ray train`
    # the attacker's budget in one word (ATTACK_PRESETS): its keys fill in what the config files and --set leave unset
    preset: str = "quick"
    # attack names, or "auto": all that apply but the strong inverters; "all": with them (attacks/params.py)
    names: list[str] = field(default_factory=lambda: ["auto"])
    # adaptive: the attacks are fitted through the attacker's own copy of the mechanism (it models the noise);
    # static: fitted on clean bottom outputs of the same public text (it does not). The first is the headline's.
    attackers: list[str] = field(default_factory=lambda: ["adaptive"])
    aux_dataset: str | None = None  # None: the run's dataset
    aux_split: str = "train"  # carved out of training when it is the training split
    aux_samples: int | None = 2000  # sentences of aux_dataset/aux_split the attacker fits on (None: all of them)
    # further public text, "dataset:split" each, taken whole (attacks/public_text.py), e.g. [sst2:test, ag_news:train]
    aux_corpora: list[str] = field(default_factory=list)
    victim_samples: int | None = 256  # victim sentences attacked per round (None: all available)
    every: int | None = None  # steps between attack rounds during training (None: only at the end)
    attributes: list[str] | None = None  # aia_probe targets (None: every private attribute of the dataset)
    epochs: int = 4  # training epochs of the learned inverters (eia_mlp, eia_transformer*, eia_bisr, eia_selftrain)
    inverter_layers: int | None = None  # encoder layers of the contextual inverters (None: 2, eia_transformer_large 4)
    # the attacker's public text is observed on the fly each epoch: new noise draws every epoch (true), or the same
    # draw per sentence every epoch (false: as a set observed once and held, without holding it)
    fresh_noise: bool = True
    batch_size: int = 64  # sentences per batch when training the learned attacks
    lr: float = 1.0e-3  # learned inverters' AdamW learning rate
    probe_epochs: int = 10  # the attribute attacks' MLPs on pooled h̃ (aia_probe, aia_keyword, aia_label)
    probe_lr: float = 3.0e-4
    opt_steps: int = 50  # eia_opt, eia_bisr: Adam steps on the relaxed token logits
    opt_candidates: int = (
        32  # eia_opt, eia_bisr: tokens per position it chooses among (nearest anchors; inverter's top)
    )
    opt_lr: float = 0.1
    opt_temperature: float = 1.0  # eia_opt: T of softmax(z/T)
    bisr_prior: float = 1.0  # eia_bisr: λ, weight of the inverter's prior beside the noise law's −log p(h̃ | x)
    selftrain_rounds: int = 2  # eia_selftrain: rounds of pseudo-labelling the victims' uploads and fitting again
    selftrain_confidence: float = 0.5  # eia_selftrain: a position is pseudo-labelled when max_v p(v | h̃) >= this
    selftrain_epochs: int = 1  # eia_selftrain: epochs over the pseudo-labelled uploads per round
    keywords: int = 20  # aia_keyword: how many sensitive words it looks for (chosen on the auxiliary data)
    keyword_list: list[str] | None = None  # aia_keyword: the sensitive words themselves (None: chosen)
    top_k: int = 5  # EIA top-k ASR

    def validate(self, key: str) -> None:
        require(len(self.names) > 0, f"{key}.names", "must name at least one attack (or 'auto')")
        require(self.preset in ATTACK_PRESETS, f"{key}.preset", f"must be one of {', '.join(ATTACK_PRESETS)}")
        require(
            len(self.attackers) > 0 and set(self.attackers) <= {"adaptive", "static"},
            f"{key}.attackers",
            f"must list adaptive and/or static (got {self.attackers})",
        )
        require(self.aux_samples is None or self.aux_samples >= 1, f"{key}.aux_samples", "must be >= 1 or null (all)")
        for entry in self.aux_corpora:
            require(
                bool(entry.partition(":")[0].strip()),
                f"{key}.aux_corpora",
                f"entry {entry!r} must be 'dataset:split' (e.g. ag_news:train)",
            )
        require(
            self.victim_samples is None or self.victim_samples >= 1, f"{key}.victim_samples", "must be >= 1 or null"
        )
        require(self.every is None or self.every >= 1, f"{key}.every", "must be >= 1 or null")
        for name in ("batch_size", "top_k"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")


# The attacker's budgets by name (`attack.preset`): a named preset's keys win over the config files, --set wins over
# the preset. quick: the dataclass defaults, minutes on a laptop (tests, screening). saturated: every inverter and every
# sentence of public text this project holds (the run's auxiliary split whole and five further corpora);
# docs/attacker.md gives the curve behind it (benchmarks/bench_attacker.py) and its cost (hours on 2 cores).
ATTACK_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "saturated": {
        "names": ["all"],
        "aux_samples": None,
        "aux_corpora": ["sst2:test", "ag_news:train", "blog:train", "squad:train", "trustpilot:train"],
    },
}


def apply_overrides(raw: dict[str, Any], items: list[str], files_resolved: bool = False) -> None:
    """Apply ``key=value`` overrides to a raw config, the attack preset they or the files name first
    (``files_resolved``: ``raw`` is already resolved, so only a preset named in ``items`` applies: a sweep's points)."""
    named = {} if files_resolved else copy.deepcopy(raw)
    for item in items:
        set_override(named, item)
    section = named.get("attack")
    name = section.get("preset", "quick") if isinstance(section, dict) else "quick"
    if name not in ATTACK_PRESETS:
        raise ConfigError(
            f"config key 'attack.preset' is {name!r}: use one of {', '.join(ATTACK_PRESETS)} "
            "(or set the attack's keys one by one)"
        )
    if ATTACK_PRESETS[name]:
        raw["attack"] = {**(raw.get("attack") or {}), **ATTACK_PRESETS[name]}
    for item in items:
        set_override(raw, item)


@dataclass
class TierConfig:
    """One device profile of the simulated population (``simulation.tiers``).

    Simulated seconds of a device in a round: measured compute × ``compute_factor`` + bytes/bandwidth
    + latency per transfer; bandwidth is multiplied by exp(N(0, ``jitter``²)) per transfer.
    """

    name: str = "default"
    share: float = 1.0  # relative share of the population drawn from this tier
    compute_factor: float = 1.0  # simulated compute s = measured s × factor (>1: slower than this machine)
    uplink_mbps: float = 20.0  # megabits per second, device → cloud
    downlink_mbps: float = 50.0  # megabits per second, cloud → device
    jitter: float = 0.0  # σ of the log-normal bandwidth multiplier per transfer
    latency_ms: float = 50.0  # one-way latency per transfer (milliseconds)
    memory_mb: float = 4096.0  # device memory for the bottom model, in MiB: caps the split depth m
    data_weight: float = 1.0  # relative amount of data a device of this tier holds
    availability: float = 1.0  # P(online when a round starts); offline devices are not selected
    dropout: float = 0.0  # P(a selected device quits mid-round, before its upload arrives)

    def validate(self, key: str) -> None:
        require(bool(self.name), f"{key}.name", "must be a non-empty tier name")
        for name in ("share", "compute_factor", "uplink_mbps", "downlink_mbps", "memory_mb", "data_weight"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        require(self.jitter >= 0, f"{key}.jitter", "must be >= 0")
        require(self.latency_ms >= 0, f"{key}.latency_ms", "must be >= 0")
        require(0 < self.availability <= 1, f"{key}.availability", "must be in (0, 1]")
        require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


@dataclass
class SimulationConfig:
    """Many virtual devices, a top-model pool and a coordinator (``privtune-ray simulate``).

    Each round the coordinator selects ``devices_per_round`` online devices; each sends its next
    ``local_batch_size`` samples through bottom → mechanism → message; the top model takes one AdamW step on
    the mean loss of every message of the round that arrived (``train.lr``, ``train.lora``, ... apply).
    """

    backend: str = "inprocess"  # inprocess (one process, deterministic) | ray
    address: str | None = None  # ray: null = start a local Ray; "auto" or "host:port" = join a running cluster
    devices: int = 100  # N virtual devices
    tiers: list[TierConfig] = field(default_factory=lambda: [TierConfig()])
    partition: str = "iid"  # iid | dirichlet (label skew) | lognormal (quantity skew)
    partition_alpha: float = 0.5  # dirichlet α
    partition_sigma: float = 1.0  # lognormal σ
    rounds: int = 20
    devices_per_round: int = 8
    local_batch_size: int = 8  # samples a selected device sends per round
    length_bucketing: bool = False  # a device's local batches group samples of similar length (less padding)
    deadline_s: float | None = None  # simulated seconds after round start; later messages are dropped (null: wait)
    device_workers: int = 1  # actors hosting the virtual devices (ray backend)
    worker_cpus: float = 1.0  # Ray CPUs reserved per device worker
    worker_threads: int | None = None  # torch threads per device worker (null: the driver machine's cores / workers)
    top_replicas: int = 1  # top-model replicas, kept in sync by a gradient all-reduce
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica
    replica_threads: int | None = None  # torch threads per replica (null: the driver machine's cores / replicas)
    replica_gpus: float | None = None  # Ray GPUs per replica (null: 1/replicas where the cluster has GPUs, else 0)
    worker_resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per device worker
    replica_resources: dict[str, float] = field(default_factory=dict)  # ... per top replica (e.g. {top_node: 1})
    placement_timeout_s: float = 60.0  # seconds the replicas' placement group may wait for room before the run stops
    replacement_timeout_s: float = 120.0  # seconds a dead actor's replacement may wait for room (a lost node)
    prefetch: bool = (
        False  # ray: devices compute round r+1 while the top trains on r (on a cluster; not on shared cores)
    )
    eval_every: int | None = None  # rounds between dev evaluations (null: only at the end)
    checkpoint_every: int = 5  # rounds between checkpoints (resume, and roll-back when a replica dies)
    max_retries: int = 3  # re-runs of a device task or a round after an actor dies

    def validate(self, key: str) -> None:
        require(self.backend in ("inprocess", "ray"), f"{key}.backend", "must be 'inprocess' or 'ray'")
        require(self.devices >= 1, f"{key}.devices", "must be >= 1 (the number of virtual devices)")
        require(len(self.tiers) >= 1, f"{key}.tiers", "must list at least one device tier")
        names = [t.name for t in self.tiers]
        require(len(set(names)) == len(names), f"{key}.tiers", f"tier names must be unique, got {names}")
        for i, tier in enumerate(self.tiers):
            tier.validate(f"{key}.tiers[{i}]")
        require(self.partition_alpha > 0, f"{key}.partition_alpha", "must be > 0")
        require(self.partition_sigma >= 0, f"{key}.partition_sigma", "must be >= 0")
        require(self.rounds >= 1, f"{key}.rounds", "must be >= 1")
        require(self.devices_per_round >= 1, f"{key}.devices_per_round", "must be >= 1")
        require(
            self.devices_per_round <= self.devices,
            f"{key}.devices_per_round",
            f"{self.devices_per_round} devices per round out of simulation.devices={self.devices}: lower it to at "
            f"most {self.devices} or raise simulation.devices",
        )
        require(self.local_batch_size >= 1, f"{key}.local_batch_size", "must be >= 1")
        require(self.deadline_s is None or self.deadline_s > 0, f"{key}.deadline_s", "must be > 0 seconds or null")
        for name in ("device_workers", "top_replicas", "checkpoint_every"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        require(self.max_retries >= 0, f"{key}.max_retries", "must be >= 0")
        for name in ("worker_cpus", "replica_cpus"):
            require(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")
        for name in ("worker_threads", "replica_threads"):
            require(getattr(self, name) is None or getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1 or null")
        require(self.replica_gpus is None or self.replica_gpus >= 0, f"{key}.replica_gpus", "must be >= 0 or null")
        for name in ("worker_resources", "replica_resources"):
            for resource, amount in getattr(self, name).items():
                require(
                    resource not in ("CPU", "GPU", "memory"),
                    f"{key}.{name}.{resource}",
                    "is set by simulation.worker_cpus / replica_cpus / replica_gpus: name a custom resource here",
                )
                require(amount >= 0, f"{key}.{name}.{resource}", "must be >= 0")
        for name in ("placement_timeout_s", "replacement_timeout_s"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0 seconds")
        require(self.eval_every is None or self.eval_every >= 1, f"{key}.eval_every", "must be >= 1 or null")


@dataclass
class DesignConfig:
    """How the trainable part is fine-tuned. ``split``: plain SGD on uploaded h (PrivTune and the perturbation
    baselines protect h). ``ewtune``: DP-SGD (EW-Tune) on the top model: Poisson-sampled batches of expected
    size ``train.batch_size``, per-sample gradients clipped to ``clip_norm``, Gaussian noise σ·C with σ calibrated
    so the whole run spends ``target_epsilon`` at ``delta``: by the Edgeworth accountant (``calibrate_with:
    edgeworth``, EW-Tune's, an approximation) or by dp-accounting's PLD bound (``pld``); both ε are reported. A run
    whose PLD ε exceeds the target by more than 10 % stops before training unless ``allow_understated_epsilon``.
    ``online`` / ``gradfree`` / ``offline``: the GuardedTuning designs (``designs/guarded.py``): the device holds
    ``adapter_layers`` trainable blocks after its frozen bottom and before the head, the cloud the middle; dCor
    weight α = ``dcor_weight``; the offline emulator keeps ``emulator_keep`` of the middle's blocks. ``online``'s
    label defence: each sample's ∂ℓ/∂A2 is clipped to L2 norm ``grad_up_clip_norm`` and gets Gaussian noise of std
    ``grad_up_noise_multiplier``·C before it leaves the device (``GuardedParams``).

    This section is the YAML schema and holds the defaults; ``name`` and ``bits`` are every design's, the other keys
    are read and range-checked by the design's own parameter dataclass (``EWTuneParams``, ``GuardedParams``)."""

    name: str = "split"  # a key of privtune_ray.designs.registry.DESIGNS: split | ewtune | online | gradfree | offline
    target_epsilon: float = 3.0  # ewtune: ε (nats) of the whole run at delta
    delta: float = 1.0e-5
    clip_norm: float = 1.0  # C: per-sample gradient L2 bound
    max_noise_multiplier: float = 100.0  # the largest σ the calibration may pick; above it a target is unreachable
    edgeworth_order: int = 2
    calibrate_with: str = "edgeworth"  # ewtune: edgeworth (EW-Tune's estimate) | pld (the dp-accounting bound)
    allow_understated_epsilon: bool = False  # ewtune: run even if the PLD ε exceeds target_epsilon by > 10 %
    bits: int | None = None  # b-bit per-row quantisation of what crosses a cut, 2..16 (None: fp32)
    adapter_layers: int = 1  # GuardedTuning: a, trainable blocks the device holds at each end
    dcor_weight: float = 0.5  # GuardedTuning: α of α·dCor(E(x), A1) (online, offline)
    emulator_keep: float = 0.5  # GuardedTuning offline: fraction of the middle's blocks the emulator keeps
    grad_up_clip_norm: float | None = None  # online: C_g, per-sample L2 bound on ∂ℓ/∂A2 before upload (None: off)
    grad_up_noise_multiplier: float = 0.0  # online: σ_g, Gaussian noise σ_g·C_g on ∂ℓ/∂A2 (label DP; 0: clip only)

    def validate(self, key: str) -> None:
        require(
            self.bits is None or 2 <= self.bits <= 16, f"{key}.bits", "must be an integer in 2..16 (or null for fp32)"
        )


@dataclass
class Config:
    """A whole run. ``name`` labels the run directory; ``seed`` fixes data order, init and noise."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mechanism: MechanismConfig = field(default_factory=MechanismConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    design: DesignConfig = field(default_factory=DesignConfig)

    def validate(self, key: str = "") -> None:
        require(self.seed >= 0, "seed", "must be >= 0")
        self.model.validate("model")
        self.data.validate("data")
        self.train.validate("train")
        self.attack.validate("attack")
        self.simulation.validate("simulation")
        self.design.validate("design")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VariantParams:
    """A variant's own parameters, peft style: a dataclass beside the variant's code (a mechanism, a design, an
    attack) whose fields name the keys it reads from its flat config section. The section is the YAML schema and
    holds the defaults; the variant's dataclass holds the ranges (:meth:`validate`), so this module imports no
    feature package. :func:`privtune_ray.checks.check_config` checks every registered variant's keys."""

    @classmethod
    def of(cls, section: Any):
        """The variant's view of a config section: its fields, read by name."""
        return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})

    def validate(self, key: str) -> None:
        """Raise the one-line :class:`ConfigError` naming ``{key}.{field}`` for the first value out of range."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise the one-line :class:`ConfigError` naming the dotted ``key`` and the fix ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"invalid value for config key '{key}': {message}")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply ``key=value`` overrides, validate the types
    and ranges (registry names: :func:`privtune_ray.checks.check_config`).

    A ``sweep:`` section is left out: ``train``/``simulate``/``attack`` on a sweep file run its base config."""
    raw = read_config_file(path) if path is not None else {}
    raw.pop("sweep", None)  # a sweep file's base config is a run config; `privtune-ray sweep` reads the section
    apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a raw mapping. ``extends: other.yaml`` (relative to the file) starts from that
    file's mapping and merges this one over it, section by section; a small CI variant extends the full config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} not found: pass a YAML file such as simulations/sst2_baseline.yaml"
        )
    if path.resolve() in _seen:
        raise ConfigError(f"config file {str(path)!r} extends itself (through {' -> '.join(map(str, _seen))})")
    try:
        with path.open(encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}{where}: not valid YAML ({what}): fix the file there") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r}: byte {exc.start} is not UTF-8: save the file as UTF-8 text"
        ) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values at top level")
    raw = loaded or {}
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return _merge(read_config_file(path.parent / str(parent), (*_seen, path.resolve())), raw)


REPLACED_ON_EXTEND = {"sweep.grid", "sweep.arms"}  # a child's grid or arms replace the parent's (null: defaults)


def _merge(base: dict[str, Any], over: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict) and prefix + key not in REPLACED_ON_EXTEND
        merged[key] = _merge(merged[key], value, f"{prefix}{key}.") if both else value
    return merged


def config_from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    cfg.validate()
    return cfg


def set_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (``3``, ``1e-4``, ``null``, ``[a, b]``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. train.max_steps=30")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: config key '{part}' holds a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: cannot parse the value ({exc})") from None


def _build(cls: type, raw: Any, prefix: str):
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}' must be a section (a mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys at {where}: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint`` (int, float, bool, str, list[str], Optional, dataclass)."""
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is dict:
        _, inner = typing.get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key '{key}' must be a mapping of names to values, got {value!r}")
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    elif hint is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a new annotation needs a branch here
        raise TypeError(f"unsupported config annotation {hint!r} for {key}")
    if not ok:
        raise ConfigError(f"config key '{key}' must be of type {hint.__name__}, got {value!r}")
    return value


def dump_config(cfg: Config, path: Path) -> None:
    with Path(path).open("w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
