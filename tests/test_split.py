"""The split: top(bottom(x)) equals the unsplit model, for every family and every depth m."""

import copy
import inspect

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    RobertaConfig,
)

from privtune_ray.errors import ModelError
from privtune_ray.models import TopModel, depth_of, load_split_model, load_task_model, split_model

TOL = 1e-5

TINY = {
    "roberta": lambda: RobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
    ),
    "distilbert": lambda: DistilBertConfig(
        vocab_size=120, dim=32, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=64, pad_token_id=0
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=120,
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=64,
        pad_token_id=119,
        bos_token_id=118,
        eos_token_id=118,
    ),
    "opt": lambda: OPTConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
        pad_token_id=1,
    ),
    "llama": lambda: LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
}
DECODERS = {"gpt2", "opt", "llama"}


def _padded_batch(pad_id: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 110, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


def _max_diff(split, task_model, ids, mask, per_token: bool) -> float:
    with torch.no_grad():
        ref = task_model(input_ids=ids, attention_mask=mask).logits
        out = split.top(split.bottom(ids, mask), mask)
    diff = (out - ref).abs()
    return float((diff[mask.bool()] if per_token else diff).max())


def test_minilm_split_equals_unsplit_at_every_depth(minilm, tokenizer, sst2_dev):
    enc = tokenizer(sst2_dev["text"][:16], padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert depth_of(minilm) == 6
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    for m in range(7):
        split = split_model(minilm, m)
        assert split.hidden_size == 384
        assert _max_diff(split, minilm, enc["input_ids"], enc["attention_mask"], per_token=False) <= TOL, m


def test_one_top_serves_devices_of_every_depth(minilm, tokenizer, sst2_dev):
    """SPEC §1 [ours]: a top holding blocks m_min+1..L takes h from a device of depth m_i ≥ m_min."""
    enc = tokenizer(sst2_dev["text"][:8], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        unsplit = minilm(**enc).logits
        top = split_model(minilm, 1).top
        for m in (1, 2, 4, 6):
            h = split_model(minilm, m).bottom(enc["input_ids"], enc["attention_mask"])
            assert (top(h, enc["attention_mask"], depth=m) - unsplit).abs().max() <= TOL, m
    with pytest.raises(ModelError, match="cannot enter"):
        top(h, enc["attention_mask"], depth=0)


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_family_sequence_classification_split(family):
    torch.manual_seed(0)
    config = TINY[family]()
    config.num_labels = 3
    task_model = AutoModelForSequenceClassification.from_config(config).eval()
    ids, mask = _padded_batch(config.pad_token_id)
    for m in range(depth_of(task_model) + 1):
        split = split_model(task_model, m)
        assert split.family.name == family
        assert _max_diff(split, task_model, ids, mask, per_token=False) <= TOL, (family, m)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_tiny_decoder_causal_lm_split(family):
    torch.manual_seed(0)
    config = TINY[family]()
    task_model = AutoModelForCausalLM.from_config(config).eval()
    ids, mask = _padded_batch(config.pad_token_id)
    for m in range(depth_of(task_model) + 1):
        split = split_model(task_model, m, task="causal-lm")
        assert _max_diff(split, task_model, ids, mask, per_token=True) <= TOL, (family, m)


@pytest.mark.parametrize("family", sorted(TINY))
def test_bottom_from_word_embeddings_equals_bottom_from_ids(family):
    """The attacker's differentiable path: bottom.from_embeds(E[x]) == bottom(x) on real tokens, with gradients."""
    torch.manual_seed(0)
    config = TINY[family]()
    task_model = AutoModelForSequenceClassification.from_config(config).eval()
    ids, mask = _padded_batch(config.pad_token_id)
    split = split_model(task_model, 2)
    embeds = split.bottom.embedding_matrix[ids].clone().requires_grad_(True)
    out = split.bottom.from_embeds(embeds, mask)
    assert (out - split.bottom(ids, mask))[mask.bool()].abs().max() <= TOL
    out[mask.bool()].sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert all(p.grad is None for p in split.bottom.parameters())


def test_bottom_is_frozen_and_top_trains(minilm, tokenizer):
    split = split_model(minilm, 2)
    assert not any(p.requires_grad for p in split.bottom.parameters())
    assert all(p.requires_grad for p in split.top.parameters())
    split.bottom.train()
    assert not split.bottom.training, "the frozen bottom must stay in eval mode"
    enc = tokenizer(["a fine film"], return_tensors="pt")
    h = split.bottom(enc["input_ids"], enc["attention_mask"])
    assert h.grad_fn is None and h.shape == (1, enc["input_ids"].shape[1], 384)
    assert len(split.bottom.blocks) == 2 and len(split.top.blocks) == 4


def test_top_takes_hidden_states_mask_and_depth_only():
    # depth: the sending device's m (where its h enters); never token ids
    assert list(inspect.signature(TopModel.forward).parameters) == ["self", "hidden", "attention_mask", "depth"]


@pytest.mark.parametrize("m", [-1, 7, 100])
def test_split_depth_outside_model_is_one_clear_error(minilm, m):
    with pytest.raises(ModelError, match=r"outside 0\.\.6.*model\.split_depth"):
        split_model(minilm, m)


def test_unsupported_architecture_is_named():
    config = ElectraConfig(
        vocab_size=50,
        embedding_size=16,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    with pytest.raises(ModelError, match="unsupported architecture 'electra'.*bert"):
        split_model(AutoModelForSequenceClassification.from_config(config), 1)


def test_causal_lm_needs_a_decoder(minilm):
    with pytest.raises(ModelError, match="causal-lm.*encoder"):
        split_model(minilm, 1, task="causal-lm")


def test_missing_model_path_and_unknown_id(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_task_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_task_model("no-such-org/no-such-model-xyz")


def test_local_path_of_another_family_loads_and_splits(tmp_path):
    torch.manual_seed(0)
    config = TINY["gpt2"]()
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "tiny-gpt2")
    split = load_split_model(str(tmp_path / "tiny-gpt2"), 2, num_labels=2)
    assert split.family.name == "gpt2" and split.depth == 3 and len(split.top.blocks) == 1


def test_a_half_precision_checkpoint_loads_in_fp32(minilm, tokenizer, tmp_path):
    """Checkpoints stored in fp16 (as many on the Hub are) still train in fp32; outputs agree to fp16 rounding."""
    copy.deepcopy(minilm).to(torch.float16).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_task_model(str(tmp_path), num_labels=2)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    batch = tokenizer(["a gripping , funny film"], return_tensors="pt")
    with torch.no_grad():
        diff = (loaded.bert(**batch).last_hidden_state - minilm.bert(**batch).last_hidden_state).abs().max()
    assert 0 < diff < 0.05
