"""The attacker's budget: its public text (several corpora, none of the victims' phrases), on-the-fly observations with
fresh noise, and the strong inverters at the boundary (near 100 % undefended at m = 0, towards chance under strong
noise)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from privtune_ray.attacks.base import AttackContext
from privtune_ray.attacks.observations import ObservationStream, observe
from privtune_ray.attacks.public_text import attacker_data, disjoint_aux, load_aux
from privtune_ray.attacks.registry import ATTACKS
from privtune_ray.attacks.selftrain_inversion import SelfTrainingInversion
from privtune_ray.attacks.suite import AttackSuite
from privtune_ray.attacks.update_inversion import AdapterUpdate, UpdateInversion, build_update_inversion
from privtune_ray.checks import check_config
from privtune_ray.cli import main
from privtune_ray.config import AttackConfig, MechanismConfig, load_config
from privtune_ray.data import load_split, tokenize_split
from privtune_ray.data.overlap import contained_in
from privtune_ray.errors import ConfigError
from privtune_ray.mechanisms.base import Mechanism
from privtune_ray.mechanisms.registry import build_mechanism
from privtune_ray.models import resolve_model, split_model
from privtune_ray.models.anchors import load_or_build_anchors


def test_a_phrase_inside_a_victims_sentence_is_dropped_not_only_an_exact_copy(tokenizer):
    victims = ["a gorgeous film , really ", "it 's dull"]
    texts = ["gorgeous film", "A Gorgeous Film , really", "film , really good", "dull", "gorgeous", "an epic"]
    assert contained_in(texts, victims).tolist() == [True, True, False, True, True, False]
    aux = tokenize_split(Dataset.from_dict({"text": texts, "label": [0] * len(texts)}), tokenizer, 32)
    kept, dropped = disjoint_aux(aux, victims)
    assert dropped == 4 and kept.texts == ["film , really good", "an epic"]


def test_public_text_from_several_corpora_keeps_only_the_victims_tasks_labels(tokenizer):
    cfg = load_config(
        "simulations/sst2_attacks.yaml", ["attack.aux_samples=50", "attack.aux_corpora=[sst2:test, ag_news:train]"]
    )
    check_config(cfg)
    aux = load_aux(cfg, tokenizer, "sst2", "dev")
    sst2_test, ag_news = len(load_split("sst2", "test")), len(load_split("ag_news", "train"))
    assert len(aux) == 50 + sst2_test + ag_news
    origin = aux.origin.astype(str)
    assert (origin == "sst2:train").sum() == 50
    assert set(aux.labels[origin == "sst2:train"]) <= {0, 1}
    assert (aux.labels[origin != "sst2:train"] == -1).all()  # unlabelled (test) and another task's labels (AG News)


def test_a_carved_attacker_with_further_corpora_leaves_the_devices_the_rest(tokenizer):
    cfg = load_config("simulations/sst2_attacks.yaml", ["attack.aux_samples=30", "attack.aux_corpora=[sst2:test]"])
    train = tokenize_split(load_split("sst2", "train", max_samples=200, seed=0), tokenizer, 32)
    aux, devices = attacker_data(cfg, tokenizer, train)
    assert len(devices) == 170 and len(aux) == 30 + len(load_split("sst2", "test"))
    assert not set(devices.texts) & set(aux.texts[:30])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("attack.aux_corpora=[imdb:train]", r"'attack.aux_corpora'.*unknown dataset 'imdb'"),
        ("attack.aux_corpora=[sst2:validation]", r"'attack.aux_corpora'.*'sst2' has no split 'validation'"),
        ("attack.aux_corpora=[':train']", r"'attack.aux_corpora'.*must be 'dataset:split'"),
        ("attack.inverter_layers=0", r"'attack.inverter_layers'.*>= 1"),
        ("attack.selftrain_confidence=1.5", r"'attack.selftrain_confidence'.*\(0, 1\)"),
        ("attack.bisr_prior=-1", r"'attack.bisr_prior'.*>= 0"),
    ],
)
def test_bad_attacker_budget_is_one_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):
        check_config(load_config("simulations/sst2_attacks.yaml", [override]))


def test_more_public_text_than_the_data_holds_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["attack", "simulations/sst2_attacks.yaml", "--out", str(out), "--set", "attack.aux_samples=100000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "attack.aux_samples=100000000 but sst2:train holds 67349" in err[0], err


def test_the_stream_draws_fresh_noise_every_pass_and_uploads_zero_padding(minilm, tokenizer):
    split = split_model(minilm, 2)
    data = tokenize_split(load_split("sst2", "dev", max_samples=16, seed=0), tokenizer, 64)
    noisy = build_mechanism(MechanismConfig(name="dchi", eta=20.0), split, tokenizer, "", seed=3)
    for mechanism, fresh in ((noisy, True), (Mechanism(), False)):
        stream = ObservationStream(split.bottom, mechanism, data, tokenizer.pad_token_id)
        first, second = (list(stream.batches(16, seed=0))[0] for _ in range(2))  # the same order, one batch
        assert torch.equal(first.input_ids, second.input_ids)
        real = first.attention_mask.bool()
        assert (first.hidden[~real] == 0).all() and (second.hidden[~real] == 0).all()  # every padding row
        assert torch.equal(first.hidden, second.hidden) != fresh
        pooled = stream.pooled()
        assert pooled.features.shape == (16, 384) and len(pooled.tokens) == 16
    fixed = ObservationStream(split.bottom, noisy, data, tokenizer.pad_token_id, fresh_noise=False, seed=7)
    first, second = (list(fixed.batches(16, seed=epoch))[0] for epoch in range(2))  # the same draw every epoch
    assert torch.equal(first.hidden, second.hidden) and not torch.equal(first.hidden, first.hidden.new_zeros(()))


def test_the_suite_records_the_attackers_budget_and_peak_memory(minilm, tokenizer):
    cfg = load_config(
        "simulations/sst2_attacks.yaml",
        ["attack.names=[eia_mlp]", "attack.epochs=1", "attack.aux_corpora=[trustpilot:train]"],
    )
    aux = tokenize_split(load_split("sst2", "train", max_samples=60, seed=0), tokenizer, 32)
    aux.origin = np.full(len(aux), "sst2:train", dtype=object)
    public = tokenize_split(load_split("trustpilot", "train", max_samples=40, seed=0), tokenizer, 32)
    public.origin = np.full(len(public), "trustpilot:train", dtype=object)
    from privtune_ray.data.batching import TokenizedSplit

    victims = [aux.texts[0]]  # one of the attacker's sentences is a victim's: dropped
    suite = AttackSuite.fit_on(
        cfg,
        split_model(minilm, 2),
        tokenizer,
        resolve_model(cfg.model.name),
        TokenizedSplit.concat([aux, public]),
        "sst2",
        victims,
        log=lambda *_: None,
    )
    setup = suite.describe()
    assert setup["aux_dropped_as_victims"] >= 1 and setup["aux_sentences"] == 100 - setup["aux_dropped_as_victims"]
    assert sum(setup["aux_corpora"].values()) == setup["aux_sentences"] and "trustpilot:train" in setup["aux_corpora"]
    assert setup["budget"]["epochs"] == 1 and setup["budget"]["fresh_noise_each_epoch"]
    assert setup["peak_rss_mb"] > 100


def _context(minilm, tokenizer, m, mechanism, aux_n=200, victims_n=32):
    torch.manual_seed(0)
    split = split_model(minilm, m)
    aux = tokenize_split(load_split("sst2", "train", max_samples=aux_n, seed=1), tokenizer, 64)
    victims = tokenize_split(load_split("sst2", "dev", max_samples=victims_n, seed=0), tokenizer, 64)
    aux, _ = disjoint_aux(aux, victims.texts)
    anchors = load_or_build_anchors(split.bottom, tokenizer, resolve_model("minilm"))
    cfg = AttackConfig(epochs=2, opt_steps=10, selftrain_rounds=1)
    ctx = AttackContext(split.bottom, tokenizer, anchors, cfg, seed=0)
    pad = tokenizer.pad_token_id
    stream = ObservationStream(split.bottom, mechanism(split, 5), aux, pad)
    return ctx, stream, observe(split.bottom, mechanism(split, 0), victims, pad)


STRONG = ("eia_transformer_large", "eia_bisr", "eia_selftrain")


@pytest.mark.long  # fits the large inverter twice
def test_the_strong_inverters_read_m0_undefended_and_fall_towards_chance_under_strong_noise(minilm, tokenizer):
    none = lambda split, seed: Mechanism(seed)
    ctx, stream, victims = _context(minilm, tokenizer, 0, none)
    for name in STRONG:
        (attack,) = ATTACKS[name](ctx, ())
        attack.fit(stream)
        assert attack.run(victims)["asr_top1"] >= 0.95, name
    assert len(ctx.fitted) == 1  # bisr and self-training start from the one large inverter

    strong = MechanismConfig(name="dchi", eta=2.0)  # mean radius d/η = 192, far above ‖h‖
    noisy = lambda split, seed: build_mechanism(strong, split, tokenizer, "", seed=seed)
    ctx, stream, victims = _context(minilm, tokenizer, 2, noisy)
    for name in STRONG:
        (attack,) = ATTACKS[name](ctx, ())
        attack.fit(stream)
        assert attack.run(victims)["asr_top1"] < 0.10, name  # the most frequent token alone scores ~5 %


def test_self_training_never_reads_the_victims_text(minilm, tokenizer):
    none = lambda split, seed: Mechanism(seed)
    ctx, stream, victims = _context(minilm, tokenizer, 0, none, aux_n=40, victims_n=8)
    ctx.cfg.epochs = 1
    attack = SelfTrainingInversion(ctx)
    attack.fit(stream)
    blind = observe(
        split_model(minilm, 0).bottom,
        Mechanism(),
        tokenize_split(load_split("sst2", "dev", max_samples=8, seed=0), tokenizer, 64),
        tokenizer.pad_token_id,
    )
    blind.input_ids = torch.randint_like(blind.input_ids, 1000, 2000)  # text the attack must not see
    guesses = []
    for obs in (victims, blind):
        torch.manual_seed(1)
        attack.run(obs)
        guesses.append(attack.predict(obs.hidden, obs.attention_mask))
    assert torch.equal(guesses[0], guesses[1])
    assert attack.describe()["pseudo_labelled_share_per_round"][0] > 0.5


def _offline_update(minilm, tokenizer, m, sentences=4):
    """One device's offline update (∇A_b, ∇A_t of its local batch) as it uploads it, by parameter name."""
    from privtune_ray.data import collate
    from privtune_ray.designs.guarded.modules import Blocks, ClientAdapters, GuardedClient, GuardedLayout

    torch.manual_seed(0)
    lay = GuardedLayout.check(6, m, 1)
    adapters = ClientAdapters(minilm, lay, "classification")
    client = GuardedClient("offline", split_model(minilm, m).bottom, adapters, 0.5, None, Blocks(minilm, lay.emulator))
    data = tokenize_split(load_split("sst2", "dev", max_samples=sentences, seed=0), tokenizer, 64)
    batch = collate(data, np.arange(sentences), tokenizer.pad_token_id)
    _, _, grads = client.offline_step(batch)
    named = {n: g for (n, _), g in zip(adapters.named_parameters(), grads) if g is not None}
    return AdapterUpdate(named, batch.input_ids, batch.attention_mask)


def test_the_update_attack_reads_an_offline_devices_batch_and_falls_to_chance_under_noise(minilm, tokenizer):
    """The offline design sends no per-sample tensor, but its adapter update of one local batch spans the batch's h_i."""
    update = _offline_update(minilm, tokenizer, 0)
    attack = UpdateInversion(
        load_or_build_anchors(split_model(minilm, 0).bottom, tokenizer, resolve_model("minilm")),
        tokenizer.all_special_ids,
    )
    clean = attack.run([update])
    assert clean["token_recall"] >= 0.95 and clean["bag_size"] <= int(update.attention_mask.sum()), clean
    generator = torch.Generator().manual_seed(0)
    noisy = AdapterUpdate(
        {n: g + 100 * g.abs().max() * torch.randn(g.shape, generator=generator) for n, g in update.gradients.items()},
        update.input_ids,
        update.attention_mask,
    )
    scores = attack.run([noisy])
    assert scores["token_recall"] < 0.10 and scores["chance_recall"] < 0.05, scores


def test_the_update_attacks_public_text_drops_the_victims_sentences_and_phrases(minilm, tokenizer):
    aux = tokenize_split(load_split("sst2", "train", max_samples=24, seed=1), tokenizer, 64)
    victims = [aux.texts[3], f"so they said : {aux.texts[5]} , and left"]  # one copy, one phrase inside a sentence
    lines = []
    build_update_inversion(
        split_model(minilm, 2).bottom, tokenizer, resolve_model("minilm"), aux, victims, lines.append
    )
    assert "from 22 auxiliary sentences (2 dropped as the victims')" in lines[0], lines


@pytest.mark.long  # observes 3,000 public sentences
def test_contextual_anchors_recover_an_update_at_m2(minilm, tokenizer):
    update = _offline_update(minilm, tokenizer, 2)
    bottom = split_model(minilm, 2).bottom
    aux = tokenize_split(load_split("sst2", "train", max_samples=3000, seed=1), tokenizer, 64)
    attack = build_update_inversion(bottom, tokenizer, resolve_model("minilm"), aux, log=lambda *_: None)
    assert attack.contextual > 5000
    assert attack.run([update])["token_recall"] >= 0.9


@pytest.mark.long  # a two-round offline simulation
def test_an_offline_simulation_scores_its_worst_channel_the_adapter_update(tmp_path):
    """What crosses in offline is the update alone: the simulation attacks it and names it the worst channel."""
    out = tmp_path / "run"
    args = ["simulate", "simulations/sst2_designs.yaml", "--out", str(out)]
    for o in (
        "design.name=offline",
        "data.max_train_samples=240",
        "data.max_eval_samples=32",
        "simulation.devices=12",
        "simulation.rounds=2",
        "simulation.devices_per_round=3",
        "simulation.local_batch_size=8",
        "attack.enabled=true",
        "attack.aux_samples=100",
        "attack.victim_samples=16",
        "train.threads=2",
    ):
        args += ["--set", o]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["worst_channel"] == "adapter_up" and summary["max_token_recovery"] > 0.5, summary
    rows = pd.read_csv(out / "attacks.csv")
    recall = rows[(rows["attack"] == "eia_update") & (rows["metric"] == "token_recall")]
    assert len(recall) == 1 and recall["value"].iloc[0] == summary["max_token_recovery"]


def _point(point, aux, sentences, asr, names=None):
    return {"point": point, "aux": aux, "epochs": 4, "aux_sentences": sentences, "names": names, "asr_top1": asr}


def test_a_saturation_curve_follows_the_strongest_inverters_and_flattens_within_a_point():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ba", Path(__file__).parents[1] / "benchmarks" / "bench_attacker.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    strong = ["eia_transformer_large", "eia_bisr"]
    results = {
        "a": _point("privtune", "2000", 1975, {"eia_knn_l2": 0.02, "eia_transformer_large": 0.10, "eia_bisr": 0.12}),
        "b": _point("privtune", "8000", 7913, {"eia_transformer_large": 0.17, "eia_bisr": 0.15}, strong),
        "c": _point("privtune", "32000", 31000, {"eia_transformer_large": 0.175, "eia_bisr": 0.16}, strong),
        "d": _point("privtune", "all", 116388, {"eia_knn_l2": 0.01, "eia_mlp": 0.30}, ["eia_knn_l2", "eia_mlp"]),
        "e": _point("dchi", "8000", 7913, {"eia_transformer_large": 0.20, "eia_bisr": 0.14}, strong),
        "f": _point("dchi", "2000", 1975, {"eia_transformer_large": 0.11, "eia_bisr": 0.138}),
        "g": _point("none", "2000", 1975, {"eia_transformer_large": 0.996, "eia_bisr": 1.0}),
    }
    curves = bench.saturation(results)
    privtune = curves["privtune-ep4"]
    # in public-text order; the memory check without the strongest inverters is no point of the curve
    assert privtune["aux"] == ["2000", "8000", "32000"] and privtune["max_top1_strongest"] == [0.12, 0.17, 0.175]
    assert privtune["saturated"]  # the last step, two doublings, added half a point
    assert privtune["last_gain_per_doubling"] == pytest.approx(0.005 / math.log2(31000 / 7913))
    assert curves["dchi-ep4"]["max_top1_strongest"] == [0.138, 0.20] and not curves["dchi-ep4"]["saturated"]
    # 1.6 points over two doublings is 0.8 per doubling: saturated; 1.6 over one doubling is not
    two = bench.saturation(
        {"a": results["a"], "b": _point("privtune", "8000", 7900, {"eia_transformer_large": 0.136, "eia_bisr": 0.1})}
    )
    one = bench.saturation(
        {"a": results["a"], "b": _point("privtune", "8000", 3950, {"eia_transformer_large": 0.136, "eia_bisr": 0.1})}
    )
    assert two["privtune-ep4"]["saturated"] and not one["privtune-ep4"]["saturated"]
    assert curves["none-ep4"]["saturated"]  # at 100 % nothing more is to be had
