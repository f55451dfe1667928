"""Which text is public: the split the cloud's warm start (and denoiser pre-training) reads, never a private one."""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from .registry import get_spec


def public_source(cfg: Config) -> tuple[str, str]:
    """(dataset, split) of the public text; refused, in one line, where it is the training or evaluation split."""
    ws = cfg.train.warm_start
    source = (ws.dataset or cfg.data.dataset, ws.split)
    for key in ("train_split", "eval_split"):
        if source == (cfg.data.dataset, getattr(cfg.data, key)):
            raise ConfigError(
                f"train.warm_start reads {source[0]} split {source[1]!r}, which is data.{key}: the cloud would learn "
                f"from private (or evaluation) data; choose another train.warm_start.split or dataset (sst2 has an "
                f"unlabelled public test split)"
            )
    if source[1] not in get_spec(source[0]).splits:
        raise ConfigError(
            f"train.warm_start.split={source[1]!r}: {source[0]} has the splits {get_spec(source[0]).splits}"
        )
    return source


def uses_public_text(cfg: Config) -> bool:
    return cfg.train.warm_start.enabled or (cfg.train.denoiser.kind != "none" and cfg.train.denoiser.pretrain_steps > 0)
