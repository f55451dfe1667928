"""Question answering as generation with a split decoder: targets, loss, greedy decoding through the split, scores.

No decoder checkpoint ships offline, so the decoder here is a small randomly initialised GPT-2 on MiniLM's
WordPiece tokenizer, built on the spot: it isolates the pipeline, and memorising a handful of SQuAD answers
through bottom → upload → top → greedy decoding shows the targets, the shift and the decoding line up.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from privtune_ray.config import load_config
from privtune_ray.data import load_split
from privtune_ray.data.batching import IGNORE, collate, tokenize_generation
from privtune_ray.drivers.train import run_training
from privtune_ray.errors import ConfigError
from privtune_ray.sweep import load_sweep, run_sweep
from privtune_ray.training.generation import normalize_answer, squad_scores
from privtune_ray.training.server import summed_loss

SIMULATIONS = Path(__file__).parents[1] / "simulations"


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=128,
        n_embd=64,
        n_layer=4,
        n_head=2,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_squad_scores_follow_the_official_normalisation():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad_scores("Denver Broncos", ["the Denver Broncos", "Broncos"]) == (1.0, 1.0)
    em, f1 = squad_scores("the Broncos of Denver", ["Denver Broncos"])  # 2 of 3 predicted tokens are right
    assert em == 0.0 and f1 == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    assert squad_scores("Carolina", ["Denver Broncos"]) == (0.0, 0.0)


def test_targets_cover_the_answer_and_the_end_token_only(tokenizer):
    raw = load_split("squad", "dev", max_samples=4, seed=0)
    split = tokenize_generation(raw, tokenizer, max_length=48, max_answer_tokens=6)
    batch = collate(split, np.arange(4), tokenizer.pad_token_id)
    for b in range(4):
        ids, start, n = split.input_ids[b], split.prompt_lengths[b], len(split.input_ids[b])
        assert n <= 48 and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.decode(ids[start - 2 : start]) == "answer :"  # the prompt ends with " answer:"
        assert (batch.labels[b, :start] == IGNORE).all() and (batch.labels[b, n:] == IGNORE).all()
        assert batch.labels[b, start:n].tolist() == ids[start:]
        answer = tokenizer.decode(ids[start:-1])
        assert answer == tokenizer.decode(tokenizer(" " + raw[b]["target"], add_special_tokens=False)["input_ids"][:6])


def test_causal_loss_is_next_token_cross_entropy_on_the_targets():
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 5], [IGNORE, 2, 6, IGNORE]])
    by_hand = sum(-torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]] for b, t in [(0, 2), (0, 3), (1, 1), (1, 2)])
    assert float(summed_loss(logits, labels)) == pytest.approx(float(by_hand), rel=1e-6)


@pytest.mark.long  # trains a decoder to memorise; its loss is checked by default above
def test_a_split_decoder_memorises_answers_and_decodes_them_greedily(tiny_decoder, tmp_path):
    cfg = load_config(
        SIMULATIONS / "squad_generation.yaml",
        [
            f"model.name={tiny_decoder}",
            "model.split_depth=1",
            "model.max_length=64",
            "attack.enabled=false",
            "data.eval_split=train",
            "data.max_train_samples=8",
            "data.max_eval_samples=8",
            "train.batch_size=8",
            "train.epochs=100",
            "train.max_steps=100",
            "train.lr=3e-3",
            "train.warmup_ratio=0",
            "train.max_new_tokens=8",
            "train.progress=false",
            "train.threads=2",
        ],
    )
    summary = json.loads((run_training(cfg, tmp_path / "run", log=quiet) / "summary.json").read_text())
    losses = pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"]
    assert losses.iloc[-1] < 0.1 * losses.iloc[0]
    assert summary["dev_exact_match"] >= 0.75 and summary["utility"] == summary["dev_f1"] >= 0.75
    assert summary["utility_metric"] == "f1" and summary["bytes_up_eval"] > 0


@pytest.mark.long  # a whole SQuAD run with its attacks
def test_squad_ci_variant_runs_with_its_attacks(tiny_decoder, tmp_path):
    base, spec, points = load_sweep(SIMULATIONS / "ci" / "squad_generation.yaml", [f"model.name={tiny_decoder}"])
    table = pd.read_csv(run_sweep(base, spec, points, tmp_path / "squad", log=quiet) / "sweep.csv").set_index("point")
    assert set(table["status"]) == {"done"}
    assert "aia_label:advantage" not in table.columns  # no class label to infer in generation
    assert table.loc["dchi-eta5-m2", "max_eia_asr_top1"] < table.loc["none-m2", "max_eia_asr_top1"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.task=classification"], r"data.dataset='squad' is a generation task: set model.task=causal-lm"),
        (["data.dataset=sst2"], r"model.task=causal-lm needs a generation dataset"),
        (["model.name=all-MiniLM-L6-v2"], r"task 'causal-lm' needs a decoder model"),
    ],
)
def test_mismatched_task_and_model_fail_before_anything_is_written(overrides, match, tmp_path):
    cfg = load_config(SIMULATIONS / "squad_generation.yaml", overrides)
    with pytest.raises((ConfigError, Exception), match=match):
        run_training(cfg, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_observations_of_generation_batches_of_different_lengths_concatenate():
    """Token targets [B, L] are no per-sample label: observations keep -1, so batches of any length join."""
    from privtune_ray.attacks.observations import Observations

    parts = [
        Observations(
            torch.zeros(2, n, 4),
            torch.ones(2, n, dtype=torch.long),
            torch.ones(2, n, dtype=torch.long),
            torch.full((2, n), IGNORE),
        )
        for n in (3, 5)
    ]
    joined = Observations.concat(parts)
    assert joined.hidden.shape == (4, 5, 4) and joined.labels.tolist() == [-1, -1, -1, -1]


def test_a_prompt_budget_too_small_for_the_answer_is_one_clear_error(tokenizer):
    raw = load_split("squad", "dev", max_samples=2, seed=0)
    with pytest.raises(ConfigError, match=r"model.max_length=8 leaves no room.*train.max_new_tokens"):
        tokenize_generation(raw, tokenizer, max_length=8, max_answer_tokens=6)


def _dropout_free_decoder(tokenizer):
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=3,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def test_u_shaped_split_gives_the_gradients_of_the_cloud_head_and_no_target_crosses(tokenizer):
    """The LM head on the device: z down, ∂ℓ/∂z up. The top's and the head's gradients equal those of the plain
    split whose cloud holds the head and receives the targets; the U-shaped upload carries no token target."""
    import copy

    from safetensors.torch import load as st_load

    from privtune_ray.message import Message, tensor_from_bytes
    from privtune_ray.models.split import split_model
    from privtune_ray.training.client import SplitClient
    from privtune_ray.training.lm_head import DeviceHead, HiddenStateServer, detach_head
    from privtune_ray.training.server import TopServer, build_optimizer

    split = tokenize_generation(
        load_split("squad", "dev", max_samples=4, seed=0), tokenizer, max_length=48, max_answer_tokens=6
    )
    batch = collate(split, np.arange(4), tokenizer.pad_token_id)
    parts = split_model(_dropout_free_decoder(tokenizer), 1, task="causal-lm")
    train_cfg = load_config(None).train

    plain_top = copy.deepcopy(parts.top)
    plain = TopServer(plain_top, *build_optimizer(plain_top, train_cfg, 10))
    sent = Message.from_bytes(SplitClient(parts.bottom, upload_targets=True).encode(batch).to_bytes())
    assert torch.equal(sent.labels, batch.labels)  # the opt-in: the answer's tokens cross
    plain.accumulate(sent)

    top = copy.deepcopy(parts.top)
    head = detach_head(top)
    device = SplitClient(parts.bottom, head=DeviceHead(head, *build_optimizer(head, train_cfg, 10)))
    cloud = HiddenStateServer(top, *build_optimizer(top, train_cfg, 10))
    msg = Message.from_bytes(device.encode(batch).to_bytes())
    assert msg.labels.numel() == 0 and not msg.targets_uploaded
    z = cloud.forward(msg)
    _, grad = device.head.loss_and_grad(z, msg.attention_mask, batch.labels)
    cloud.backward(grad)
    pads = ~batch.attention_mask.bool()
    for payload in (z, grad):  # z down and ∂ℓ/∂z up: the real rows only, zeros where the receiver pads
        assert st_load(payload)["hidden"].shape[0] == int(batch.attention_mask.sum())
        assert not tensor_from_bytes(payload)[pads].any()

    plain_grads = dict(plain_top.named_parameters())
    for name, p in top.named_parameters():
        torch.testing.assert_close(p.grad, plain_grads[name].grad, rtol=1e-4, atol=1e-6)
    for name, p in head.named_parameters():
        torch.testing.assert_close(p.grad, plain_grads[f"head.{name}"].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lm_head", ["device", "cloud"])
def test_the_summary_names_whether_the_targets_crossed(tiny_decoder, tmp_path, lm_head):
    cfg = load_config(
        SIMULATIONS / "squad_generation.yaml",
        [
            f"model.name={tiny_decoder}",
            "model.split_depth=1",
            "model.max_length=48",
            "attack.enabled=false",
            "data.max_train_samples=8",
            "data.max_eval_samples=4",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.max_new_tokens=2",
            "train.progress=false",
            "train.threads=2",
            f"model.lm_head={lm_head}",
        ],
    )
    summary = json.loads((run_training(cfg, tmp_path / "run", log=quiet) / "summary.json").read_text())
    assert summary["lm_head"] == lm_head
    assert summary["targets_uploaded"] is (lm_head == "cloud") and bool(summary["leaks"]) is (lm_head == "cloud")
    assert (summary["bytes_down"] > 0) is (lm_head == "device")
