"""Attack rounds during training (``train`` and ``simulate``): one driver for every fitted attack.

The cloud keeps the latest ``attack.victim_samples`` sentences it received and attacks them every
``attack.every`` steps (rounds) and once at the end. Two streams of victims, by what the attacks read:

* uploads (h̃, or GuardedTuning's A1): the :class:`~privtune_ray.attacks.suite.AttackSuite`'s attacks;
* returned gradients (A2 with ∂ℓ/∂A2, GuardedTuning online): the gradient attacks (``gm_label``);
* adapter updates (GuardedTuning online's and offline's ∇A_b of one local batch): ``eia_update``.

Uploads are grouped by the depth m of the device that sent them (and its tier, in ``simulate``): each depth's
victims are attacked by a suite fitted through the bottom at that depth, rows carry ``depth`` and ``tier``, and the
summary's headline is the worst group's, beside ``attack_by_depth`` (a shallow device leaks more: m = 0 is a table
look-up).

The summary's ``max_token_recovery`` is the worst channel's: the larger of the uploads' best top-1 ASR and the update
attack's token recall, with ``worst_channel`` naming it (``act_up`` or ``adapter_up``).

Each round appends its rows to ``attacks.csv`` (long format, ``suite.long_rows``) and returns the summary part:
``attacks`` (name -> scores), ``max_eia_asr_top1``, ``max_aia_advantage`` and ``attack_setup``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from ..data.batching import Batch, TokenizedSplit
from ..message import Message
from ..seeding import isolated_rng
from .base import Attack
from .observations import Observations
from .suite import AttackSuite, VictimSample, by_name, headline, long_rows
from .update_inversion import AdapterUpdate, UpdateInversion

if TYPE_CHECKING:  # annotation only
    from ..runs import RunDir


class AttackRounds:
    """Rounds of the fitted attacks on the latest victims; rows to ``run``'s ``attacks.csv`` as produced.

    ``AttackRounds(run, victim_samples, suites=None, gradient_attacks=())``:

    * ``run``: the run directory (``append``/``append_rows``);
    * ``victim_samples``: ``cfg.attack.victim_samples``, sentences kept per stream and group (None: all since the
      last round);
    * ``suites``: the fitted attacks on the uploads (``AttackSuite.fit_on``) by the depth they were fitted at, or
      one suite for every upload (``train``: one depth), or None;
    * ``gradient_attacks``: fitted attacks on returned gradients (``[gradient_matching.build_gradient_matching(...)]``
      on GuardedTuning online), or none;
    * ``refit``: where the attacker's model changes as training goes (GuardedTuning's trained adapters), a function
      that fits ``(suites, gradient_attacks)`` afresh on what the cloud holds now; called at the start of every
      round, in their place.

    Feed it with :meth:`observe_message` (an upload, as ``train`` and ``simulate`` receive it, with its device's
    depth and tier in ``simulate``), :meth:`observe_returned` (online's A2 and ∂ℓ/∂A2) or :meth:`observe` (any
    :class:`Observations`: those with ``gradients`` go to the gradient attacks); :meth:`reset` empties every sample
    (a resumed run redoes rounds).
    """

    def __init__(
        self,
        run: RunDir,
        victim_samples: int | None,
        suites: dict[int, AttackSuite] | AttackSuite | None = None,
        gradient_attacks: Sequence[Attack] = (),
        refit: Callable[[], tuple[dict[int, AttackSuite], list[Attack]]] | None = None,
        update_attack: UpdateInversion | None = None,
    ):
        self.run, self.gradient_attacks, self.refit = run, list(gradient_attacks), refit
        self.suites = as_suites(suites)
        self.update_attack = update_attack
        self.victim_samples = victim_samples
        self.reset()

    @property
    def attacks_uploads(self) -> bool:
        """Whether the uploads are attacked (fitted suites, or suites fitted at each round)."""
        return bool(self.suites) or self.refit is not None

    def reset(self) -> None:
        """Forget every victim observed so far."""
        self.samples: dict[Group, VictimSample] = {}  # uploads, by the sender's (depth, tier)
        self.returned = VictimSample(self.victim_samples)  # with the returned gradients
        self.updates: list[AdapterUpdate] = []  # adapter updates since the last round

    def victims(self) -> dict[str, object]:
        """The victims kept for the next round (for a checkpoint after the last round, which no redone round refills)."""
        return {
            "uploads": {group: list(sample.parts) for group, sample in self.samples.items()},
            "returned": list(self.returned.parts),
            "updates": list(self.updates),
        }

    def restore_victims(self, state: dict) -> None:
        self.reset()
        uploads = state["uploads"]
        if isinstance(uploads, list):  # a checkpoint from before uploads were grouped by depth and tier
            uploads = {(None, ""): uploads}
        for group, parts in uploads.items():
            self._sample(group).parts = list(parts)
        self.returned.parts = list(state["returned"])
        self.updates = list(state.get("updates", []))

    def _sample(self, group: Group) -> VictimSample:
        if group not in self.samples:
            self.samples[group] = VictimSample(self.victim_samples)
        return self.samples[group]

    def observe_update(self, update: AdapterUpdate) -> None:
        """A device's uploaded adapter update with its local batch; the latest ``victim_samples`` sentences' kept."""
        self.updates.append(update)
        while self.victim_samples is not None and len(self.updates) > 1:
            if sum(len(u.input_ids) for u in self.updates[1:]) < self.victim_samples:
                break
            self.updates.pop(0)

    def observe(self, observations: Observations, depth: int | None = None, tier: str = "") -> None:
        """Add victims: to the gradient attacks' sample if they carry ``gradients``, else to the sample of their
        sender's ``depth`` (None: the one depth there is) and ``tier``."""
        if observations.gradients is not None:
            self.returned.add(observations)
        else:
            self._sample((depth, tier)).add(observations)

    def observe_message(
        self, msg: Message, batch: Batch, train_split: TokenizedSplit, depth: int | None = None, tier: str = ""
    ) -> None:
        """A received upload ``msg`` of ``batch`` (rows ``batch.indices`` of ``train_split``, whose attributes and
        texts are the ground truth the attacks are scored on), from a device at ``depth`` in ``tier``."""
        self.observe(
            Observations.from_message(
                msg,
                batch.input_ids,
                {k: v[batch.indices] for k, v in train_split.attributes.items()},
                [train_split.texts[i] for i in batch.indices],
            ),
            depth,
            tier,
        )

    def observe_returned(self, a2: torch.Tensor, gradients: torch.Tensor, batch: Batch) -> None:
        """The cloud's A2 [B, L, d] of ``batch`` and the ∂ℓ/∂A2 [B, L, d] the device returned for it."""
        self.observe(Observations(a2, batch.attention_mask, batch.input_ids, batch.labels, gradients=gradients))

    @isolated_rng()
    def round(self, step: int, log=None) -> dict:
        """Attack the victims kept since the last round (``step``: the step or rounds done, the rows' ``step``).

        The suite raises :class:`~privtune_ray.errors.DataError` on an empty sample; the gradient attacks skip
        a round without victims. Returns the summary part (empty without attacks)."""
        summary: dict = {}
        if self.refit is not None:
            suites, self.gradient_attacks = self.refit()
            self.suites = as_suites(suites)
        if self.suites:
            summary = self._upload_round(step, log)
        if self.gradient_attacks:
            summary = merge_attack_rows(summary, self._gradient_round(step, log))
        if self.update_attack is not None and self.updates:
            summary = self._update_round(summary, step, log)
        return summary

    def _upload_round(self, step: int, log=None) -> dict:
        """Each (depth, tier) group's victims attacked by the suite of its depth; the worst group's headline."""
        groups = {g: sample.take() for g, sample in self.samples.items() if sample.parts} or {
            (None, ""): VictimSample(self.victim_samples).take()  # no victim at all: the suite names the fix
        }
        parts = {}
        for (depth, tier), victims in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
            suite = self._suite_for(depth)
            rows = suite.run(victims)
            keys = {} if depth is None else {"depth": depth, "tier": tier}
            self.run.append_rows("attacks", long_rows(rows, step=step, **keys, victims=len(victims)))
            named = by_name(rows)
            if log is not None:
                where = "" if depth is None else f" at m = {depth}" + (f" ({tier})" if tier else "")
                for name, r in named.items():
                    score = (
                        f"ASR top-1 {r['asr_top1']:.3f}"
                        if r["kind"] == "inversion"
                        else f"advantage {r['advantage']:+.3f}"
                    )
                    log(f"privtune-ray: attack {name:<22} {score} on {len(victims)} victim sentences{where}")
            parts[(depth, tier)] = {
                "attacks": {name: {k: v for k, v in r.items() if k != "attack"} for name, r in named.items()},
                **headline(rows),
                "attack_setup": suite.describe(),
                "victims": len(victims),
            }
        return worst_group(parts)

    def _suite_for(self, depth: int | None) -> AttackSuite:
        """The suite fitted at ``depth``; the one suite there is for ungrouped uploads (``train``, old checkpoints)."""
        if depth in self.suites:
            return self.suites[depth]
        if depth is None and len(self.suites) == 1:
            return next(iter(self.suites.values()))
        raise KeyError(f"no attack suite was fitted at depth {depth} (fitted: {sorted(map(str, self.suites))})")

    def _update_round(self, summary: dict, step: int, log=None) -> dict:
        """``eia_update`` on the updates kept since the last round; the worst channel's token recovery."""
        assert self.update_attack is not None
        updates, self.updates = self.updates, []
        row: dict = {"attack": self.update_attack.name, "kind": "inversion", **self.update_attack.run(updates)}
        self.run.append_rows("attacks", long_rows([row], step=step, victims=int(row["updates"])))
        if log is not None:
            log(
                f"privtune-ray: attack {row['attack']:<22} token recall {row['token_recall']:.3f} (chance "
                f"{row['chance_recall']:.3f}) on {int(row['updates'])} device updates"
            )
        merged = {
            **summary,
            "attacks": {**summary.get("attacks", {}), row["attack"]: {k: v for k, v in row.items() if k != "attack"}},
        }
        uploads = summary.get("max_eia_asr_top1")
        channels = ([("act_up", uploads)] if uploads is not None else []) + [("adapter_up", row["token_recall"])]
        channel, value = max(channels, key=lambda c: c[1])
        merged["max_token_recovery"] = value
        merged["worst_channel"] = channel
        return merged

    def _gradient_round(self, step: int, log=None) -> list[dict]:
        if not self.returned.parts:
            return []
        victims = self.returned.take()
        rows = []
        for attack in self.gradient_attacks:
            row = {"attack": attack.name, "kind": attack.kind, **attack.run(victims)}
            self.run.append_rows("attacks", long_rows([row], step=step, victims=row["samples"]))
            if log is not None:
                log(
                    f"privtune-ray: attack {row['attack']:<22} advantage {row['advantage']:+.3f} on "
                    f"{row['samples']} victim samples"
                )
            rows.append(row)
        return rows


Group = tuple  # (depth or None, tier name or "")


def as_suites(suites: dict[int, AttackSuite] | AttackSuite | None) -> dict:
    """Suites by depth; a lone suite serves every upload (key None)."""
    if suites is None:
        return {}
    return dict(suites) if isinstance(suites, dict) else {None: suites}


def worst_group(parts: dict[Group, dict]) -> dict:
    """The summary part of a round of groups: the group with the highest best inversion (else attribute) score is
    the headline, with ``worst_depth``/``worst_tier`` and every group under ``attack_by_depth`` (``train``'s one
    group: its part as it is)."""
    if list(parts) == [(None, "")]:
        part = dict(parts[(None, "")])
        part.pop("victims")
        return part

    def score(part: dict) -> tuple:
        return (part["max_eia_asr_top1"] or 0.0, part["max_aia_advantage"] or 0.0)

    (depth, tier), worst = max(parts.items(), key=lambda kv: score(kv[1]))
    table: dict[str, list[dict]] = {}
    for (m, name), part in parts.items():
        table.setdefault(str(m), []).append(
            {
                "tier": name,
                "victims": part["victims"],
                "max_eia_asr_top1": part["max_eia_asr_top1"],
                "max_aia_advantage": part["max_aia_advantage"],
            }
        )
    summary = {k: v for k, v in worst.items() if k != "victims"}
    return {**summary, "worst_depth": depth, "worst_tier": tier, "attack_by_depth": table}


def merge_attack_rows(summary: dict, rows: list[dict]) -> dict:
    """Add attribute-attack rows (gradient matching) to an attack summary and its max AIA advantage."""
    merged = {**summary, "attacks": {**summary.get("attacks", {})}}
    for row in rows:
        merged["attacks"][row["attack"]] = {k: v for k, v in row.items() if k != "attack"}
    advantages = [  # the headline's attacker model (a static attacker's rows are tagged name@static)
        v["advantage"] for k, v in merged["attacks"].items() if v.get("kind") == "attribute" and "@" not in k
    ]
    merged["max_aia_advantage"] = max(advantages) if advantages else None
    return merged
