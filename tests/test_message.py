"""The upload: what crosses the boundary, and how many bytes it is."""

import dataclasses

import torch

from privtune_ray.message import Message


def test_round_trip_is_exact_and_carries_no_token_ids():
    g = torch.Generator().manual_seed(0)
    msg = Message(hidden=torch.randn(4, 9, 384, generator=g), attention_mask=torch.ones(4, 9, dtype=torch.long),
                  labels=torch.tensor([0, 1, 1, 0]), device_id=17, split_depth=2, meta={"mechanism": "none"})  # fmt: skip
    msg.attention_mask[2, 5:] = 0
    back = Message.from_bytes(msg.to_bytes())
    assert torch.equal(back.hidden, msg.hidden)
    assert torch.equal(back.attention_mask, msg.attention_mask)
    assert torch.equal(back.labels, msg.labels)
    assert back.device_id == 17 and back.split_depth == 2 and back.meta == {"mechanism": "none"}
    assert {f.name for f in dataclasses.fields(Message)} == {"hidden", "attention_mask", "labels", "device_id", "split_depth", "meta", "bits"}
    assert Message.from_bytes(dataclasses.replace(msg, split_depth=None).to_bytes()).split_depth is None


def test_size_is_the_payload_size():
    B, L, d = 32, 64, 384
    msg = Message(hidden=torch.zeros(B, L, d), attention_mask=torch.ones(B, L, dtype=torch.long), labels=torch.zeros(B, dtype=torch.long))
    payload = msg.to_bytes()
    tensor_bytes = B * L * d * 4 + B * L * 1 + B * 8  # fp32 h, uint8 mask, int64 labels
    assert tensor_bytes < len(payload) < tensor_bytes + 512  # plus the safetensors JSON header
