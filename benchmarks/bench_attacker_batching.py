"""How the attacker's minibatches change its inverter: eia_transformer fitted on the same 2,000 public sentences through
PrivTune (η = 5, m = 4) in three ways, scored on the same 256 dev victims.

    python benchmarks/bench_attacker_batching.py [--out benchmarks/results/attacker_batching.json]

* ``held``: observed once and held (one noise draw per sentence), random minibatches (the attacker before the stream);
* ``stream_random``: observed on the fly (fresh noise every epoch), random minibatches (the attacker now);
* ``stream_bucketed``: observed on the fly, length-bucketed minibatches (sentences of one length together).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from privtune_ray.attacks.base import AttackContext  # noqa: E402
from privtune_ray.attacks.learned_inversion import LearnedInversion  # noqa: E402
from privtune_ray.attacks.observations import ObservationStream, observe  # noqa: E402
from privtune_ray.attacks.public_text import disjoint_aux  # noqa: E402
from privtune_ray.benchmarking import write_results  # noqa: E402
from privtune_ray.config import AttackConfig, MechanismConfig  # noqa: E402
from privtune_ray.data import load_split, tokenize_split  # noqa: E402
from privtune_ray.mechanisms.registry import build_mechanism  # noqa: E402
from privtune_ray.models import resolve_model, split_model  # noqa: E402
from privtune_ray.models.anchors import load_or_build_anchors  # noqa: E402
from privtune_ray.models.loading import load_task_model, load_tokenizer  # noqa: E402

MODEL, M, ETA, AUX, VICTIMS, EPOCHS, SEED = "all-MiniLM-L6-v2", 4, 5.0, 2000, 256, 4, 1_000_003


def fit_and_score(mode: str) -> dict:
    tokenizer, task_model = load_tokenizer(MODEL), load_task_model(MODEL, num_labels=2)
    split, model_id = split_model(task_model, M), resolve_model(MODEL)
    victims = tokenize_split(load_split("sst2", "dev", max_samples=VICTIMS, seed=0), tokenizer, 64)
    aux = tokenize_split(load_split("sst2", "train", max_samples=AUX, seed=17), tokenizer, 64)
    aux, _ = disjoint_aux(aux, victims.texts)
    cfg = MechanismConfig(name="privtune", eta=ETA)
    device = build_mechanism(cfg, split, tokenizer, model_id, seed=0)
    device.fit(victims)
    uploads = observe(split.bottom, device, victims, tokenizer.pad_token_id)
    attacker = build_mechanism(cfg, split, tokenizer, model_id, seed=SEED)
    attacker.fit(aux)
    stream = ObservationStream(split.bottom, attacker, aux, tokenizer.pad_token_id, bucketing=mode == "stream_bucketed")
    source = stream.materialise() if mode == "held" else stream
    torch.manual_seed(SEED)
    anchors = load_or_build_anchors(split.bottom, tokenizer, model_id)
    inverter = LearnedInversion(
        AttackContext(split.bottom, tokenizer, anchors, AttackConfig(epochs=EPOCHS)), "transformer"
    )
    start = time.perf_counter()
    inverter.fit(source)
    fit_s = time.perf_counter() - start
    return {"asr_top1": inverter.run(uploads)["asr_top1"], "loss_per_epoch": inverter.history, "fit_s": fit_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/attacker_batching.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = ("held", "stream_random", "stream_bucketed")
    results = {
        "benchmark": "attacker_batching",
        "setting": {
            "model": MODEL,
            "m": M,
            "mechanism": "privtune",
            "eta": ETA,
            "aux_sentences": AUX,
            "victims": VICTIMS,
            "epochs": EPOCHS,
            "threads": args.threads,
            "seeds": 1,
        },
        **{mode: fit_and_score(mode) for mode in modes},
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
