"""The upload from a device to the cloud: the only thing that crosses the split boundary.

A :class:`Message` carries the (perturbed) bottom output h̃ ∈ R^{B×L×d}, the attention mask and the
classification labels (SPEC §1: labels travel with the activations; the cloud computes the loss). It has
no field for token ids or text: a causal LM's [B, L] token targets are refused unless the run opted into
uploading them (``targets_uploaded``, which the summary names as leaking them).

Only the N = Σ mask real rows cross: padding rows (mask 0) have attended to the whole sentence at m ≥ 1
and would carry it, so they are zero in every Message and are not sent; the receiver puts zeros there.
The size is ``len(to_bytes())``: the safetensors payload (8-byte header length, JSON header, raw
little-endian tensor bytes), i.e. N·d·4 bytes for fp32 h̃ plus B·L for the mask; with ``bits`` = b, the
real rows travel as b-bit per-row codes (``quantisation.py``): ⌈N·d·b/8⌉ + 8·N bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .quantisation import Quantised, dequantise, quantise

# What crosses a cut, by channel (``devices.csv`` has a ``bytes_<channel>`` column each): the split designs send
# act_up only; GuardedTuning adds A2 (act_down), the gradients both ways and the adapters' synchronisation.
CHANNELS = ("act_up", "act_down", "grad_up", "grad_down", "adapter_up", "adapter_down")
UPLINKS = ("act_up", "grad_up", "adapter_up")  # the channels that go device → cloud


def zero_padding(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``x`` [B, L, ...] with every row at a mask-0 position set to 0 (they carry nothing)."""
    keep = attention_mask.to(device=x.device, dtype=torch.bool).reshape(*attention_mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass
class Message:
    hidden: torch.Tensor  # h̃, float [B, L, d]; rows at mask-0 positions are zero (set here)
    attention_mask: torch.Tensor  # [B, L], 1 = real token
    labels: torch.Tensor  # int64 [B] class ids, or [0] (none cross: GuardedTuning, a causal LM's device-side loss)
    device_id: int = 0
    split_depth: int | None = None  # m of the device that sent it (where h enters the top model)
    meta: dict[str, str] = field(default_factory=dict)  # e.g. mechanism name and parameters
    bits: int | None = None  # quantise h̃ to b bits per value on the wire (None: fp32)
    targets_uploaded: bool = False  # opt-in: [B, L] causal-LM token targets travel (they leak the answer text)

    def __post_init__(self) -> None:
        if self.labels.dim() > 1 and not self.targets_uploaded:
            raise ValueError(
                "a Message carries no token ids: [B, L] token targets cross only with targets_uploaded=True "
                "(model.lm_head=cloud), which leaks them"
            )
        self.hidden = zero_padding(self.hidden, self.attention_mask)

    @property
    def batch_size(self) -> int:
        return int(self.hidden.shape[0])

    def to_bytes(self) -> bytes:
        """Serialise for upload (safetensors; the mask as uint8)."""
        tensors = {
            "attention_mask": self.attention_mask.to(torch.uint8).contiguous().cpu(),
            "labels": self.labels.to(torch.long).contiguous().cpu(),
        }
        header = {"device_id": str(self.device_id), **self.meta}
        if self.targets_uploaded:
            header["targets_uploaded"] = "true"
        _pack(self.hidden, self.bits, tensors, header)
        if self.split_depth is not None:
            header["split_depth"] = str(self.split_depth)
        return st_save(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, payload: bytes) -> Message:
        tensors = st_load(payload)
        meta = _metadata(payload)
        device_id = int(meta.pop("device_id", 0))
        depth = meta.pop("split_depth", None)
        bits = meta.get("bits")
        targets_uploaded = meta.pop("targets_uploaded", None) == "true"
        hidden = _unpack(tensors, meta)
        return cls(
            hidden=hidden,
            attention_mask=tensors["attention_mask"].to(torch.long),
            labels=tensors["labels"],
            device_id=device_id,
            split_depth=None if depth is None else int(depth),
            meta=meta,
            bits=None if bits is None else int(bits),
            targets_uploaded=targets_uploaded,
        )


def take_rows(msg: Message, rows: torch.Tensor) -> Message:
    """The samples ``rows`` of a message with class-id labels, cut to their own longest real length (the cloud
    backpropagating a large upload in pieces)."""
    if msg.labels.dim() != 1 or msg.labels.numel() != msg.batch_size:
        raise ValueError("only a message with class-id labels splits into rows")
    mask = msg.attention_mask[rows]
    real = mask.any(0).nonzero()
    length = int(real.max()) + 1 if len(real) else 1
    return Message(
        hidden=msg.hidden[rows, :length],
        attention_mask=mask[:, :length],
        labels=msg.labels[rows],
        device_id=msg.device_id,
        split_depth=msg.split_depth,
    )


def concat_messages(msgs: list[Message]) -> Message:
    """One message holding ``msgs``' samples in order (the cloud batching uploads for one forward/backward): h̃
    and the mask right-padded with zeros to the longest L. They must enter the top at the same depth and carry
    class ids ([B] labels)."""
    depths = {m.split_depth for m in msgs}
    if len(depths) != 1 or any(m.labels.dim() != 1 for m in msgs):
        raise ValueError(f"only messages of one split depth with class-id labels concatenate (depths {depths})")
    length = max(m.hidden.shape[1] for m in msgs)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, length - x.shape[1]))

    return Message(
        hidden=torch.cat([pad(m.hidden) for m in msgs]),
        attention_mask=torch.cat([pad(m.attention_mask) for m in msgs]),
        labels=torch.cat([m.labels for m in msgs]),
        device_id=msgs[0].device_id,
        split_depth=msgs[0].split_depth,
    )


def _pack(x: torch.Tensor, bits: int | None, tensors: dict, header: dict) -> None:
    """Put ``x`` [B, L, d] into a payload: only the rows where ``tensors["attention_mask"]`` is 1, packed
    [N, d] in row-major order; fp32 as ``hidden``, or b-bit codes with per-row scale and offset."""
    x = x[tensors["attention_mask"].to(device=x.device, dtype=torch.bool)]
    if bits is None:
        tensors["hidden"] = x.detach().contiguous().cpu()
        return
    q = quantise(x, bits)
    tensors.update(
        hidden_codes=torch.frombuffer(bytearray(q.payload), dtype=torch.uint8),
        hidden_scale=q.scale,
        hidden_offset=q.offset,
    )
    header.update(bits=str(bits), hidden_shape=",".join(map(str, q.shape)))


def _unpack(tensors: dict, meta: dict[str, str]) -> torch.Tensor:
    """The [B, L, d] tensor :func:`_pack` stored, zeros at mask-0 rows (``bits`` and ``hidden_shape`` are
    taken out of ``meta``)."""
    bits = meta.pop("bits", None)
    if bits is None:
        rows = tensors["hidden"]
    else:
        shape = tuple(int(n) for n in meta.pop("hidden_shape").split(","))
        rows = dequantise(
            Quantised(
                tensors["hidden_codes"].numpy().tobytes(),
                tensors["hidden_scale"],
                tensors["hidden_offset"],
                shape,
                int(bits),
            )
        )
    keep = tensors["attention_mask"].bool()
    out = rows.new_zeros(*keep.shape, rows.shape[-1])
    out[keep] = rows
    return out


def tensor_to_bytes(x: torch.Tensor, attention_mask: torch.Tensor, bits: int | None = None) -> bytes:
    """One [B, L, d] tensor as it crosses a cut (GuardedTuning's A2 and gradients, a causal LM's returned
    hidden states): its real rows (and the mask, B·L bytes), fp32 or b-bit codes (⌈N·d·b/8⌉ + 8·N bytes)."""
    tensors = {"attention_mask": attention_mask.to(torch.uint8).contiguous().cpu()}
    header: dict[str, str] = {}
    _pack(x, bits, tensors, header)
    return st_save(tensors, metadata=header)


def tensor_from_bytes(payload: bytes) -> torch.Tensor:
    return _unpack(st_load(payload), _metadata(payload))


def _metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` entry of a safetensors header (string key/values)."""
    header_len = int.from_bytes(payload[:8], "little")
    return dict(json.loads(payload[8 : 8 + header_len]).get("__metadata__", {}))
