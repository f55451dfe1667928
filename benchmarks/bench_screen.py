"""The frontier screen (issue 15): which split depth m and noise level to fine-tune, in minutes instead of hours.

For each split depth m and mechanism setting, on SST-2 with the frontier protocol's config:

* **privacy**: the adaptive attacks' max EIA ASR top-1 on ``attack.victim_samples`` dev sentences, the attacks fitted
  on the protocol's auxiliary sentences through the attacker's own copy of the mechanism (as in a run);
* **a utility proxy**: the dev accuracy of a logistic regression on the mean-pooled released h̃,
  (1/|x|) Σ_i h̃_i, fitted on ``--train-samples`` training sentences released by the same mechanism.

The proxy is not a fine-tune: the top model can do better than a linear read-out of the mean (or worse, in a
short run). It ranks settings by how much sentence-level signal survives the noise; the frontier sweep then
measures the ones worth fine-tuning. Each depth's clean bottom outputs are computed once; each setting releases
them through its mechanism, seeded like a run.

**An ablation at equal ASR.** With ``--seeds`` (the mechanism's noise, the attacker's and the probe's
initialisation; the training sample stays seed 0's) and each variant at two or more η that bracket ``--bound``, the
results' ``at_equal_asr`` holds every variant's probe accuracy interpolated at that ASR (:mod:`analysis.ablation`),
mean ± std over seeds, set against plain d_χ. Variants are the settings' labels without η, e.g.
``privtune:radius=0`` (no mean shift), ``privtune:importance=false`` (no scaling).

    python benchmarks/bench_screen.py [--depths 2 3 4] [--settings dchi:4 privtune:eta=4,radius=0 ...] [--train-samples 8000]
        [--seeds 0 1 2] [--bound 0.10] [--attacks eia_knn_l2 eia_mlp] [--out benchmarks/results/screen.json]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))

import torch  # noqa: E402

from analysis.ablation import at_equal_asr, compare_to  # noqa: E402
from privtune_ray.attacks.observations import Observations, observe  # noqa: E402
from privtune_ray.attacks.public_text import load_aux  # noqa: E402
from privtune_ray.attacks.suite import AttackSuite, headline  # noqa: E402
from privtune_ray.benchmarking import write_results  # noqa: E402
from privtune_ray.checks import check_config  # noqa: E402
from privtune_ray.config import load_config  # noqa: E402
from privtune_ray.data.batching import tokenize_split  # noqa: E402
from privtune_ray.data.registry import load_split  # noqa: E402
from privtune_ray.errors import PrivtuneError  # noqa: E402
from privtune_ray.mechanisms.base import Mechanism  # noqa: E402
from privtune_ray.mechanisms.registry import build_mechanism  # noqa: E402
from privtune_ray.models.loading import load_split_model, load_tokenizer, resolve_model  # noqa: E402
from privtune_ray.models.split import mean_pool  # noqa: E402

CONFIG = Path(__file__).parents[1] / "simulations" / "sst2_frontier.yaml"


def released(mechanism: Mechanism, clean: Observations, chunk: int = 256) -> Observations:
    """``clean`` (identity releases) released through ``mechanism``, chunk by chunk, as a device releases a batch."""
    parts = [
        mechanism.release(
            clean.hidden[i : i + chunk], clean.attention_mask[i : i + chunk], clean.input_ids[i : i + chunk]
        )
        for i in range(0, len(clean), chunk)
    ]
    return Observations(
        torch.cat(parts), clean.attention_mask, clean.input_ids, clean.labels, dict(clean.attributes), clean.texts
    )


def probe_accuracy(train: Observations, dev: Observations, steps: int = 300, seed: int = 0) -> float:
    """Dev accuracy of a logistic regression (full batch, Adam, weight decay 1e-3) on standardised mean-pooled h̃."""
    torch.manual_seed(seed)
    x_train = mean_pool(train.hidden, train.attention_mask)
    x_dev = mean_pool(dev.hidden, dev.attention_mask)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_dev = (x_train - mu) / sd, (x_dev - mu) / sd
    classes = int(train.labels.max()) + 1
    head = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x_train), train.labels).backward()
        opt.step()
    with torch.no_grad():
        return float((head(x_dev).argmax(1) == dev.labels).float().mean())


def variant(label: str) -> str:
    """A setting's label without its η: ``privtune:eta=6,importance=false`` → ``privtune:importance=false``."""
    name, _, rest = label.partition(":")
    pairs = [p for p in rest.split(",") if p and "=" in p and not p.startswith("eta=")]
    return f"{name}:{','.join(pairs)}" if pairs else name


def parse_setting(text: str) -> tuple[str, list[str]]:
    """``dchi:4`` (η) or ``privtune:eta=4,importance=false`` → the setting's label and its ``mechanism.*`` overrides."""
    name, _, rest = text.partition(":")
    pairs = [p for p in rest.split(",") if p] if "=" in rest else [f"eta={rest}"] if rest else []
    return text, [f"mechanism.name={name}", *(f"mechanism.{p}" for p in pairs)]


def screen_depth(m: int, settings: list[tuple[str, list[str]]], args, log=print) -> list[dict]:
    base = [f"model.split_depth={m}", f"attack.names=[{','.join(args.attacks)}]", "attack.attackers=[adaptive]"]
    cfg = load_config(CONFIG, base + args.set)
    split = load_split_model(cfg.model.name, m)
    tokenizer = load_tokenizer(cfg.model.name)
    model_id = resolve_model(cfg.model.name)
    pad = tokenizer.pad_token_id
    tokenize = lambda raw: tokenize_split(raw, tokenizer, cfg.model.max_length)  # noqa: E731
    train = tokenize(load_split("sst2", "train", max_samples=args.train_samples, seed=cfg.seed))
    dev = tokenize(load_split("sst2", "dev"))
    victims = dev.subset(range(min(cfg.attack.victim_samples or len(dev), len(dev))))
    aux = load_aux(cfg, tokenizer, "sst2", "dev")
    start = time.perf_counter()
    clean_train = observe(split.bottom, Mechanism(cfg.seed), train, pad)
    clean_dev = observe(split.bottom, Mechanism(cfg.seed), dev, pad)
    log(f"m={m}: clean bottom outputs of {len(train)} + {len(dev)} sentences ({time.perf_counter() - start:.0f} s)")
    majority = float(clean_dev.labels.eq(clean_dev.labels.mode().values).float().mean())
    rows = [{"m": m, "setting": "none", "mechanism": "none", "eta": None, "max_eia_asr": None, "probe_accuracy": None}]
    rows[0]["probe_accuracy"] = probe_accuracy(clean_train, clean_dev, seed=cfg.seed)
    log(f"m={m}: none  probe {rows[0]['probe_accuracy']:.3f} (majority {majority:.3f})")
    for (label, overrides), seed in itertools.product(settings, args.seeds):
        start = time.perf_counter()
        cfg = load_config(CONFIG, base + args.set + overrides + [f"seed={seed}"])
        device = build_mechanism(cfg.mechanism, split, tokenizer, model_id, seed=seed)
        device.fit(train)
        accuracy = probe_accuracy(released(device, clean_train), released(device, clean_dev), seed=seed)
        suite = AttackSuite.fit_on(cfg, split, tokenizer, model_id, aux, "sst2", victims.texts, log=lambda *_: None)
        victim_device = build_mechanism(cfg.mechanism, split, tokenizer, model_id, seed=seed + 1)
        victim_device.fit(victims)
        attack_rows = suite.run(observe(split.bottom, victim_device, victims, pad))
        asr = headline(attack_rows)["max_eia_asr_top1"]
        rows.append(
            {
                "m": m,
                "setting": label,
                "variant": variant(label),
                "seed": seed,
                "mechanism": cfg.mechanism.name,
                "eta": cfg.mechanism.eta,
                "max_eia_asr": asr,
                "asr_by_attack": {r["attack"]: r["asr_top1"] for r in attack_rows},
                "probe_accuracy": accuracy,
                "seconds": time.perf_counter() - start,
            }
        )
        log(f"m={m}: {label} seed {seed}  probe {accuracy:.3f}  max EIA ASR {asr:.3f}  ({rows[-1]['seconds']:.0f} s)")
    for row in rows:
        row["majority"] = majority
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["dchi:4", "dchi:6", "privtune:4", "privtune:6"],
        help="mechanism:eta, or mechanism:key=value,... (its mechanism.* keys, e.g. privtune:eta=4,importance=false)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="mechanism, attacker and probe seeds")
    parser.add_argument("--bound", type=float, default=0.10, help="the ASR at which variants are compared")
    parser.add_argument("--train-samples", type=int, default=8000)
    parser.add_argument("--attacks", nargs="+", default=["eia_knn_l2", "eia_mlp"])
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "screen.json"))
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    try:  # every setting at every depth is checked before anything runs: bad input is one line, exit status 2
        for m in args.depths:
            for _, overrides in settings:
                cfg = load_config(CONFIG, [f"model.split_depth={m}", *args.set, *overrides])
                check_config(cfg)
        load_split_model(cfg.model.name, max(args.depths))  # a depth beyond the model's is refused here
    except PrivtuneError as exc:
        print(f"bench_screen: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict] = []
    for i, m in enumerate(args.depths):  # written after each depth: an interrupted screen keeps what it measured
        rows += screen_depth(m, settings, args)
        write_results(
            args.out,
            {
                "benchmark": "frontier screen: adaptive max EIA ASR vs a linear probe on mean-pooled h̃, per split depth",
                "config": str(CONFIG.relative_to(CONFIG.parents[1])),
                "train_samples": args.train_samples,
                "attacks": args.attacks,
                "overrides": args.set,
                "seeds": args.seeds,
                "depths_done": args.depths[: i + 1],
                "complete": i + 1 == len(args.depths),
                "at_equal_asr": compare_to(at_equal_asr(rows, args.bound), reference="dchi"),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
