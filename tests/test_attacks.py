"""The attack suite: calibration that must hold (no defence), collapse under strong noise, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from privtune_ray.attacks.attribute_probe import AttributeProbe
from privtune_ray.attacks.base import Attack, AttackContext
from privtune_ray.attacks.gradient_matching import GradientContext, GradientMatchingLabels
from privtune_ray.attacks.knn_inversion import KNNInversion
from privtune_ray.attacks.learned_inversion import LearnedInversion
from privtune_ray.attacks.observations import Observations, observe
from privtune_ray.attacks.optimisation_inversion import OptimisationInversion
from privtune_ray.attacks.public_text import disjoint_aux
from privtune_ray.attacks.registry import ATTACKS, GRADIENT_ATTACKS
from privtune_ray.attacks.rounds import AttackRounds
from privtune_ray.attacks.suite import AttackSuite, attack_names
from privtune_ray.checks import check_config
from privtune_ray.cli import main
from privtune_ray.config import AttackConfig, MechanismConfig, load_config
from privtune_ray.data import load_split, tokenize_split
from privtune_ray.errors import ConfigError, DataError
from privtune_ray.mechanisms.base import Mechanism
from privtune_ray.mechanisms.registry import build_mechanism
from privtune_ray.models import resolve_model, split_model
from privtune_ray.models.anchors import load_or_build_anchors


def _setup(minilm, tokenizer, m, dataset="sst2", aux_n=500, victims_n=None, mechanism=None, attributes=()):
    split = split_model(minilm, m)
    mech = mechanism(split) if mechanism else Mechanism()
    aux = tokenize_split(load_split(dataset, "train", max_samples=aux_n, seed=1), tokenizer, 64, attributes)
    victims = tokenize_split(load_split(dataset, "dev", max_samples=victims_n, seed=0), tokenizer, 64, attributes)
    aux, _ = disjoint_aux(aux, victims.texts)
    anchors = load_or_build_anchors(split.bottom, tokenizer, resolve_model("minilm"))
    ctx = AttackContext(split.bottom, tokenizer, anchors, AttackConfig(epochs=4), seed=0)
    pad = tokenizer.pad_token_id
    return ctx, observe(split.bottom, mech, aux, pad), observe(split.bottom, mech, victims, pad)


@pytest.mark.long  # the whole dev set through KNN
def test_knn_recovers_95_percent_of_sst2_dev_tokens_at_m0(minilm, tokenizer):
    ctx, _, victims = _setup(minilm, tokenizer, 0, aux_n=10)
    assert len(victims) == 872
    for metric in ("l2", "cosine"):
        scores = KNNInversion(ctx, metric).run(victims)
        assert scores["asr_top1"] >= 0.95, (metric, scores)
        assert scores["asr_top5"] >= scores["asr_top1"] and scores["rouge_l"] >= 0.9


@pytest.mark.long  # trains an inverter
def test_learned_inverter_beats_knn_at_m2_without_defence(minilm, tokenizer):
    ctx, aux, victims = _setup(minilm, tokenizer, 2, aux_n=500, victims_n=200)
    knn = KNNInversion(ctx, "l2").run(victims)["asr_top1"]
    mlp = LearnedInversion(ctx, "mlp")
    mlp.fit(aux)
    learned = mlp.run(victims)["asr_top1"]
    assert mlp.history[-1] < mlp.history[0]
    assert learned > knn, (learned, knn)


@pytest.mark.long  # an optimisation attack over many steps
def test_optimisation_inversion_recovers_tokens_at_m2(minilm, tokenizer):
    ctx, _, victims = _setup(minilm, tokenizer, 2, aux_n=10, victims_n=32)
    ctx.cfg.opt_steps = 40
    scores = OptimisationInversion(ctx).run(victims)
    assert scores["asr_top1"] >= 0.9, scores


@pytest.mark.slow  # the attribute probe's end-to-end check in the default suite: the attack CLI's aia_label
def test_blog_gender_probe_beats_the_majority_class_without_defence(minilm, tokenizer):
    ctx, aux, victims = _setup(minilm, tokenizer, 0, "blog", aux_n=8000, attributes=("gender",))  # all 2,760 dev
    probe = AttributeProbe(ctx, "gender")
    probe.fit(aux)
    scores = probe.run(victims)
    assert scores["accuracy"] > scores["majority_accuracy"], scores


def test_every_attack_falls_towards_chance_under_strong_noise(minilm, tokenizer):
    torch.manual_seed(0)  # the attacks' initialisations: the same whichever tests ran before in this process
    strong = MechanismConfig(name="dchi", eta=2.0)  # mean radius d/η = 192, far above ‖h‖
    make = lambda split: build_mechanism(strong, split, tokenizer, "", seed=0)
    ctx, aux, victims = _setup(minilm, tokenizer, 2, aux_n=200, victims_n=120, mechanism=make)
    ctx.cfg.epochs, ctx.cfg.probe_epochs, ctx.cfg.opt_steps = 2, 4, 10
    for name in ("eia_knn_l2", "eia_knn_cosine", "eia_mlp", "eia_opt", "aia_label", "aia_keyword"):
        (attack,) = ATTACKS[name](ctx, ())
        attack.fit(aux)
        scores = attack.run(victims)
        if attack.kind == "inversion":
            assert scores["asr_top1"] < 0.10, (name, scores)  # the most frequent token alone scores ~5 %
        else:
            assert scores["advantage"] < 0.10, (name, scores)


def test_attack_for_a_missing_attribute_is_one_clear_error(tmp_path):
    cfg = load_config("simulations/sst2_attacks.yaml", ["attack.names=[aia_probe]"])
    with pytest.raises(DataError, match="aia_probe needs a private attribute.*blog"):
        from privtune_ray.drivers.attack import run_attack_evaluation

        run_attack_evaluation(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_auxiliary_set_overlapping_the_victims_is_an_error(tmp_path):
    from privtune_ray.drivers.attack import run_attack_evaluation

    cfg = load_config("simulations/sst2_attacks.yaml", ["attack.aux_split=dev"])
    with pytest.raises(ConfigError, match="victims' own data"):
        run_attack_evaluation(cfg, tmp_path / "run")
    aux = tokenize_split(load_split("sst2", "dev", max_samples=5), _tok(), 64)
    with pytest.raises(DataError, match="entirely made of victims"):
        disjoint_aux(aux, aux.texts)


def _tok():
    from privtune_ray.models import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


def test_empty_victim_sample_and_unknown_attack_are_errors():
    with pytest.raises(DataError, match="empty"):
        Observations.concat([])
    with pytest.raises(ConfigError, match="unknown attack 'eia_magic'"):
        check_config(load_config(None, ["attack.names=[eia_magic]"]))


# ---------------------------------------------------------------- one registry, one attack-round driver


class _Fixed(Attack):
    """A stand-in attack whose scores are given (the driver's bookkeeping is under test, not an attack)."""

    def __init__(self, name: str, kind: str, scores: dict, reads: str = "upload"):  # no context: nothing is fitted
        self.name, self.kind, self.scores, self.reads = name, kind, scores, reads
        self.seen: list[int] = []

    def run(self, victims: Observations) -> dict:
        self.seen.append(len(victims))
        return dict(self.scores)


class _Records:
    """The part of a run directory the driver writes: ``attacks.csv`` rows in order."""

    def __init__(self):
        self.rows: list[dict] = []

    def append(self, table: str, row: dict) -> None:
        self.append_rows(table, [row])

    def append_rows(self, table: str, rows: list[dict]) -> None:
        assert table == "attacks"
        self.rows.extend(rows)


def _obs(n: int, gradients: bool = False) -> Observations:
    hidden = torch.zeros(n, 3, 4)
    return Observations(
        hidden,
        torch.ones(n, 3, dtype=torch.long),
        torch.ones(n, 3, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
        gradients=torch.ones_like(hidden) if gradients else None,
    )


def _rounds(victim_samples=None, gradient=True):
    suite = AttackSuite(
        None,
        [
            _Fixed("eia_knn_l2", "inversion", {"asr_top1": 0.5}),
            _Fixed("aia_label", "attribute", {"accuracy": 0.6, "advantage": 0.1}),
        ],
        fit_s={"aia_label": 2.0},
        aux_size=10,
    )
    gm = _Fixed("gm_label", "attribute", {"accuracy": 0.9, "advantage": 0.4, "samples": 5}, "returned_gradient")
    records = _Records()
    return AttackRounds(records, victim_samples, suites=suite, gradient_attacks=[gm] if gradient else []), records, gm


def test_attack_rounds_merge_the_suite_and_gradient_matching_as_the_runs_record_them():
    rounds, records, gm = _rounds()
    rounds.observe(_obs(4))
    rounds.observe(_obs(5, gradients=True))  # with gradients: the gradient attacks' victims
    summary = rounds.round(7)
    assert list(summary) == [
        "attacks",
        "max_eia_asr_top1",
        "max_aia_advantage",
        "max_eia_asr_top1_by_attacker",
        "attack_setup",
    ]
    assert summary["attacks"]["eia_knn_l2"] == pytest.approx(
        {
            "attacker": "adaptive",
            "kind": "inversion",
            "asr_top1": 0.5,
            "seconds": summary["attacks"]["eia_knn_l2"]["seconds"],
            "fit_s": 0.0,
        }
    )
    assert summary["max_eia_asr_top1_by_attacker"] == {"adaptive": 0.5}
    assert summary["attacks"]["gm_label"] == {"kind": "attribute", "accuracy": 0.9, "advantage": 0.4, "samples": 5}
    assert summary["max_eia_asr_top1"] == 0.5 and summary["max_aia_advantage"] == 0.4  # over the suite's and gm's
    assert summary["attack_setup"] == {
        "aux_sentences": 10,
        "aux_dropped_as_victims": 0,
        "aux_corpora": {},
        "budget": {},
        "peak_rss_mb": None,
    }
    assert gm.seen == [5] and [a.seen for a in rounds.suites[None].attacks] == [[4], [4]]
    # attacks.csv: the suite's rows (victims = its sample), then gradient matching's (victims = its samples)
    assert [(r["attack"], r["metric"]) for r in records.rows] == [
        ("eia_knn_l2", "asr_top1"),
        ("eia_knn_l2", "seconds"),
        ("eia_knn_l2", "fit_s"),
        ("aia_label", "accuracy"),
        ("aia_label", "advantage"),
        ("aia_label", "seconds"),
        ("aia_label", "fit_s"),
        ("gm_label", "accuracy"),
        ("gm_label", "advantage"),
        ("gm_label", "samples"),
    ]
    assert {(r["step"], r["victims"]) for r in records.rows[:7]} == {(7, 4)}
    assert {(r["step"], r["victims"]) for r in records.rows[7:]} == {(7, 5)}
    assert list(records.rows[0]) == ["step", "victims", "attack", "attacker", "kind", "metric", "value"]


def test_attack_rounds_without_gradient_victims_skip_gradient_matching():
    rounds, records, gm = _rounds()
    rounds.observe(_obs(3))
    summary = rounds.round(1)
    assert gm.seen == [] and "gm_label" not in summary["attacks"] and summary["max_aia_advantage"] == 0.1
    assert {r["attack"] for r in records.rows} == {"eia_knn_l2", "aia_label"}
    alone, _, _ = _rounds(gradient=False)  # the single-process path: the suite's summary, nothing merged
    alone.observe(_obs(3))
    assert list(alone.round(1)) == [
        "attacks",
        "max_eia_asr_top1",
        "max_aia_advantage",
        "max_eia_asr_top1_by_attacker",
        "attack_setup",
    ]


def test_attack_rounds_keep_the_latest_victims_and_reset():
    rounds, _, gm = _rounds(victim_samples=4)
    for n in (3, 3, 3):
        rounds.observe(_obs(n))
        rounds.observe(_obs(n, gradients=True))
    rounds.round(1)
    assert rounds.suites[None].attacks[0].seen == [4] and gm.seen == [4]  # the latest 4 of each stream
    rounds.observe(_obs(2))
    rounds.observe(_obs(2, gradients=True))
    rounds.reset()  # a resumed run redoes its rounds: what came before is forgotten
    with pytest.raises(DataError, match="empty"):
        rounds.round(2)


def test_gradient_matching_is_in_the_one_registry_but_not_in_the_suite():
    assert GRADIENT_ATTACKS == {"gm_label"} and "gm_label" in ATTACKS
    top = torch.nn.Linear(4, 2)
    (attack,) = ATTACKS["gm_label"](GradientContext(top, AttackConfig(), seed=3), ())
    assert isinstance(attack, GradientMatchingLabels) and attack.top is top and attack.seed == 3
    assert attack.kind == "attribute" and attack.reads == "returned_gradient"
    assert "gm_label" not in attack_names(AttackConfig(names=["auto"]), ("gender",))
    assert attack_names(AttackConfig(names=["eia_knn_l2", "gm_label"]), ()) == ["eia_knn_l2"]


def _attack_cli(out, victims: int | None, *overrides: str) -> dict:
    """The small configuration of the six-attack evaluation on SST-2 dev (all of it, or its first ``victims``)."""
    extra = [] if victims is None else ["--set", f"attack.victim_samples={victims}"]
    extra += sum((["--set", o] for o in overrides), [])
    rc = main(
        [
            "attack",
            "simulations/sst2_attacks.yaml",
            "--out",
            str(out),
            "--set",
            "attack.aux_samples=300",
            "--set",
            "attack.epochs=1",
            "--set",
            "attack.probe_epochs=2",
            "--set",
            "attack.opt_steps=5",
            "--set",
            "train.progress=false",
            *extra,
        ]
    )
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.long  # every attack end to end through the CLI
def test_attack_cli_runs_the_suite_end_to_end(tmp_path):
    """Every attack of the suite through `privtune-ray attack` on 96 dev sentences (the whole dev set: ``slow``)."""
    summary = _attack_cli(tmp_path / "attacks", victims=96)
    assert summary["victims"] == 96
    assert set(summary["attacks"]) == {
        "eia_knn_l2",
        "eia_knn_cosine",
        "eia_mlp",
        "eia_transformer",
        "eia_opt",
        "aia_keyword",
        "aia_label",
    }
    assert summary["max_eia_asr_top1"] >= 0.9
    rows = pd.read_csv(tmp_path / "attacks" / "attacks.csv")
    assert set(rows["attack"]) == set(summary["attacks"]) and np.isfinite(rows["value"]).all()


def test_a_static_attacker_fits_on_clean_outputs_and_is_reported_beside_the_adaptive_one(tmp_path):
    """d_χ at η = 10: each attack is fitted once per attacker model and reported under its own key; the
    nearest-neighbour attack fits nothing, so both attacker models score it alike, while the inverter differs."""
    summary = _attack_cli(
        tmp_path / "attacks",
        64,
        "mechanism.name=dchi",
        "mechanism.eta=10",
        "attack.names=[eia_knn_l2, eia_mlp]",
        "attack.attackers=[adaptive, static]",
        "attack.epochs=3",
    )
    attacks = summary["attacks"]
    assert set(attacks) == {"eia_knn_l2", "eia_mlp", "eia_knn_l2@static", "eia_mlp@static"}
    assert attacks["eia_mlp"]["asr_top1"] != attacks["eia_mlp@static"]["asr_top1"]
    assert attacks["eia_knn_l2"]["asr_top1"] == attacks["eia_knn_l2@static"]["asr_top1"]
    by = summary["max_eia_asr_top1_by_attacker"]
    assert by == {
        "adaptive": max(attacks["eia_knn_l2"]["asr_top1"], attacks["eia_mlp"]["asr_top1"]),
        "static": max(attacks["eia_knn_l2@static"]["asr_top1"], attacks["eia_mlp@static"]["asr_top1"]),
    }
    assert summary["max_eia_asr_top1"] == by["adaptive"]  # the first attacker model is the headline's
    rows = pd.read_csv(tmp_path / "attacks" / "attacks.csv")
    assert set(rows["attacker"]) == {"adaptive", "static"}


@pytest.mark.slow
def test_attack_cli_runs_the_suite_on_all_of_sst2_dev(tmp_path):
    out = tmp_path / "attacks"
    summary = _attack_cli(out, victims=None)
    assert summary["victims"] == 872
    assert set(summary["attacks"]) == {
        "eia_knn_l2",
        "eia_knn_cosine",
        "eia_mlp",
        "eia_transformer",
        "eia_opt",
        "aia_keyword",
        "aia_label",
    }
    assert summary["max_eia_asr_top1"] >= 0.9
    rows = pd.read_csv(out / "attacks.csv")
    assert set(rows["attack"]) == set(summary["attacks"]) and np.isfinite(rows["value"]).all()


def test_training_runs_attack_rounds_on_the_uploaded_messages(tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "simulations/sst2_baseline.yaml",
            "--out",
            str(out),
            "--set",
            "train.max_steps=6",
            "--set",
            "data.max_train_samples=600",
            "--set",
            "data.max_eval_samples=64",
            "--set",
            "train.progress=false",
            "--set",
            "attack.enabled=true",
            "--set",
            "attack.every=3",
            "--set",
            "attack.aux_samples=200",
            "--set",
            "attack.victim_samples=40",
            "--set",
            "attack.names=[eia_knn_l2,aia_label]",
            "--set",
            "attack.epochs=1",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_split_size"] == 400  # the attacker's 200 auxiliary sentences are carved out
    assert summary["max_eia_asr_top1"] > 0.9
    rows = pd.read_csv(out / "attacks.csv")
    assert sorted(set(rows["step"])) == [3, 6]
    assert (rows["victims"] == 40).all()


def test_the_adaptive_attacker_fits_on_its_text_quantised_as_the_uploads_are(minilm, tokenizer, monkeypatch):
    """With design.bits = 4 every upload is 4-bit per row: the adaptive attacker's own observations take the same
    round trip (at most 16 values per row), the static attacker's stay fp32."""
    cfg = load_config(
        "simulations/sst2_attacks.yaml",
        ["design.bits=4", "attack.names=[eia_knn_l2]", "attack.attackers=[adaptive, static]"],
    )
    aux = tokenize_split(load_split("sst2", "dev", max_samples=20, seed=0), tokenizer, 32)
    seen = {}
    monkeypatch.setattr(KNNInversion, "fit", lambda self, obs: seen.__setitem__(self.attacker, obs))
    AttackSuite.fit_on(cfg, split_model(minilm, 2), tokenizer, resolve_model(cfg.model.name), aux, "sst2")

    def most_values_in_a_row(stream) -> int:
        obs = stream.materialise()
        rows = obs.hidden[obs.attention_mask.bool()]
        return max(len(torch.unique(row)) for row in rows)

    assert most_values_in_a_row(seen["adaptive"]) <= 16
    assert most_values_in_a_row(seen["static"]) > 300  # d = 384 distinct fp32 values


def test_victims_from_a_checkpoint_before_grouping_are_attacked_by_the_one_suite(tmp_path):
    rounds, records, _ = _rounds(victim_samples=4)
    rounds.restore_victims({"uploads": [_obs(3)], "returned": [], "updates": []})  # the old, ungrouped form
    summary = rounds.round(1)
    assert [a.seen for a in rounds.suites[None].attacks] == [[3], [3]] and summary["max_eia_asr_top1"] == 0.5
