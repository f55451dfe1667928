"""The upload: what crosses the boundary, and how many bytes it is."""

import dataclasses

import pytest
import torch
from safetensors.torch import load as st_load

from privtune_ray.message import Message, _metadata, tensor_from_bytes, tensor_to_bytes


def _mask(B, L, lengths):
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


def _fields(payload: bytes) -> dict:
    """Every field of a payload: its tensors and its header (safetensors orders the header's keys freely)."""
    return {**{k: v.tolist() for k, v in st_load(payload).items()}, "header": _metadata(payload)}


def test_round_trip_is_exact_and_carries_no_token_ids():
    g = torch.Generator().manual_seed(0)
    mask = _mask(4, 9, [9, 9, 5, 9])
    hidden = torch.randn(4, 9, 384, generator=g)
    msg = Message(
        hidden=hidden,
        attention_mask=mask,
        labels=torch.tensor([0, 1, 1, 0]),
        device_id=17,
        split_depth=2,
        meta={"mechanism": "none"},
    )
    back = Message.from_bytes(msg.to_bytes())
    assert torch.equal(back.hidden[mask.bool()], hidden[mask.bool()])  # real rows exact
    assert not back.hidden[2, 5:].any() and not msg.hidden[2, 5:].any()  # padding rows carry nothing
    assert torch.equal(back.attention_mask, msg.attention_mask)
    assert torch.equal(back.labels, msg.labels)
    assert back.device_id == 17 and back.split_depth == 2 and back.meta == {"mechanism": "none"}
    assert {f.name for f in dataclasses.fields(Message)} == {
        "hidden",
        "attention_mask",
        "labels",
        "device_id",
        "split_depth",
        "meta",
        "bits",
        "targets_uploaded",
    }
    assert Message.from_bytes(dataclasses.replace(msg, split_depth=None).to_bytes()).split_depth is None


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_padding_rows_never_depend_on_the_input(bits):
    """Two inputs that differ only in what sits at mask-0 positions give identical payloads, field by field:
    the payload is a function of the real rows and the mask alone (fp32 and b-bit, Message and bare tensors)."""
    g = torch.Generator().manual_seed(1)
    mask = _mask(3, 7, [7, 2, 4])
    real = torch.randn(3, 7, 16, generator=g)
    other = torch.where(mask.bool()[..., None], real, torch.randn(3, 7, 16, generator=g) * 100)
    labels = torch.tensor([1, 0, 1])
    a = Message(real, mask, labels, bits=bits).to_bytes()
    b = Message(other, mask, labels, bits=bits).to_bytes()
    assert _fields(a) == _fields(b) and len(a) == len(b)
    assert _fields(tensor_to_bytes(real, mask, bits)) == _fields(tensor_to_bytes(other, mask, bits))
    assert not tensor_from_bytes(tensor_to_bytes(other, mask, bits))[~mask.bool()].any()


def test_size_counts_the_real_rows_only():
    B, L, d = 32, 64, 384
    lengths = [L - (i % 40) for i in range(B)]
    mask = _mask(B, L, lengths)
    msg = Message(hidden=torch.ones(B, L, d), attention_mask=mask, labels=torch.zeros(B, dtype=torch.long))
    payload = msg.to_bytes()
    tensor_bytes = sum(lengths) * d * 4 + B * L * 1 + B * 8  # fp32 real rows, uint8 mask, int64 labels
    assert tensor_bytes < len(payload) < tensor_bytes + 512  # plus the safetensors JSON header


def test_token_targets_cross_only_by_opt_in():
    mask = _mask(2, 5, [5, 3])
    targets = torch.randint(0, 100, (2, 5))
    with pytest.raises(ValueError, match="targets_uploaded"):
        Message(torch.zeros(2, 5, 8), mask, targets)
    back = Message.from_bytes(Message(torch.zeros(2, 5, 8), mask, targets, targets_uploaded=True).to_bytes())
    assert back.targets_uploaded and torch.equal(back.labels, targets)
