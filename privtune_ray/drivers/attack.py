"""``privtune-ray attack CONFIG``: the attack suite against one device's messages for the eval split.

Victims: ``attack.victim_samples`` sentences of ``data.eval_split`` (SST-2 dev: 872), pushed through the
bottom and the device's mechanism (fitted on the victims' own data, as a device would). Attacker: fits
on ``attack.aux_samples`` sentences of ``attack.aux_split`` (default the train split) and ``attack.aux_corpora``
(``public_text.py``; any sentence equal to or inside a victim's is dropped). Writes ``attacks.csv`` (long format)
and ``summary.json`` (the one ``Summary`` schema of every command: no training, so no utility) to the run directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..attacks.observations import observe
from ..attacks.public_text import load_aux
from ..attacks.suite import AttackSuite, by_name, headline, long_rows, probe_attributes
from ..checks import check_config
from ..config import Config
from ..data.batching import tokenize_split
from ..data.registry import get_spec, load_split
from ..designs.registry import design_for
from ..mechanisms.registry import build_mechanism
from ..models.loading import load_split_model, load_tokenizer, resolve_model
from ..runs import RunSession, Summary, Totals


def run_attack_evaluation(cfg: Config, out: str | os.PathLike | None = None, log=print) -> Path:
    check_config(cfg)
    design = design_for(cfg, "attack")  # GuardedTuning's designs run under `simulate` only
    spec = get_spec(cfg.data.dataset)
    probe_attributes(cfg.attack, cfg.data.dataset)  # bad input fails before anything is written
    split = load_split_model(cfg.model.name, cfg.model.split_depth, num_labels=max(spec.num_labels, 2))
    tokenizer = load_tokenizer(cfg.model.name)
    model_id = resolve_model(cfg.model.name)
    victims_raw = load_split(
        cfg.data.dataset,
        cfg.data.eval_split,
        cfg.data.data_dir,
        hub_fallback=cfg.data.hub_fallback,
        max_samples=cfg.attack.victim_samples,
        seed=cfg.seed,
    )
    victims = tokenize_split(victims_raw, tokenizer, cfg.model.max_length, attributes=spec.attributes)
    aux = load_aux(cfg, tokenizer, cfg.data.dataset, cfg.data.eval_split)
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)

    session = RunSession.open(cfg, out, resume=False)
    run = session.run
    log(f"privtune-ray: writing attack evaluation to {run.path}")
    start = time.perf_counter()
    mechanism = build_mechanism(cfg.mechanism, split, tokenizer, model_id, seed=cfg.seed)
    mechanism.fit(victims)
    victim_obs = observe(split.bottom, mechanism, victims, tokenizer.pad_token_id, bits=cfg.design.bits)
    suite = AttackSuite.fit_on(cfg, split, tokenizer, model_id, aux, cfg.data.dataset, victims.texts, log=log)
    rows = suite.run(victim_obs)
    for row in long_rows(rows, step=0):
        run.append("attacks", row)
    details = {
        "victims_split": cfg.data.eval_split,
        "victims": len(victims),
        "attacks": {name: {k: v for k, v in r.items() if k != "attack"} for name, r in by_name(rows).items()},
        **headline(rows),
        "attack_setup": suite.describe(),
        "wall_s": time.perf_counter() - start,
    }
    privacy = mechanism.guarantee(releases=1, max_length=cfg.model.max_length).to_dict()
    summary = Summary.of(
        cfg,
        "attack",
        design.defence(),
        privacy=privacy,
        utility=None,  # nothing is trained
        dev_loss=None,
        totals=Totals(),
        details=details,
        run_dir=run.path,
    )
    session.finish(summary)
    for name, r in by_name(rows).items():
        main = (
            f"ASR top-1 {r['asr_top1']:.3f}"
            if r["kind"] == "inversion"
            else f"accuracy {r['accuracy']:.3f} (advantage {r['advantage']:+.3f})"
        )
        log(f"privtune-ray: {name:<24} {main}")
    log(f"privtune-ray: wrote {run.summary_path}")
    return run.path
