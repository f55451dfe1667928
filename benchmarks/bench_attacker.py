"""How strong is the attacker: max EIA top-1 ASR against the attacker's public text and epochs, at the frontier's
points, each point a fresh `privtune-ray attack` process (so its peak resident memory is its own).

    python benchmarks/bench_attacker.py [--points none privtune dchi] [--aux 2000 8000 32000 all] [--epochs 4]
        [--out benchmarks/results/attacker.json]

``all`` is the whole of SST-2's training split (every phrase inside a dev victim's sentence dropped) and every
further public corpus (``ALL_CORPORA``). Results are merged into ``--out`` by (point, aux, epochs), so a long curve
can be measured in parts; ``saturated`` marks a point whose last doubling of public text added <= 1 point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from privtune_ray.config import ATTACK_PRESETS  # noqa: E402
from privtune_ray.runs import git_revision, package_versions  # noqa: E402

CONFIG = "simulations/sst2_attacker.yaml"
# The frontier's points (frontier_tuned.json: m = 4; PrivTune and d_chi at the eta of its 10 % bound).
POINTS = {
    "none": ["mechanism.name=none"],
    "privtune": ["mechanism.name=privtune", "mechanism.eta=5.0"],
    "dchi": ["mechanism.name=dchi", "mechanism.eta=5.0"],
}
ALL_CORPORA = "[" + ", ".join(ATTACK_PRESETS["saturated"]["aux_corpora"]) + "]"  # the saturated preset's
SATURATION_POINTS = 0.01  # a doubling of public text that adds at most this much max top-1 ASR
# A curve follows the strongest inverters (the others are minutes behind and points below at every budget measured):
# a run measures them, alone or among the config's attacks, to be a point of its curve.
CURVE_ATTACKS = ("eia_transformer_large", "eia_bisr")


def measure(
    point: str, aux: str, epochs: int, runs: Path, names: list[str] | None = None, threads: int | None = None
) -> dict:
    """One point: a fresh `privtune-ray attack` process in ``runs/<key>`` (a previous run of the key is replaced)."""
    key = run_key(point, aux, epochs, names)
    overrides = [*POINTS[point], f"attack.epochs={epochs}"] + ([f"train.threads={threads}"] if threads else [])
    if names:
        overrides.append(f"attack.names=[{', '.join(names)}]")
    overrides += (
        ["attack.aux_samples=null", f"attack.aux_corpora={ALL_CORPORA}"]
        if aux == "all"
        else [f"attack.aux_samples={aux}"]
    )
    shutil.rmtree(runs / key, ignore_errors=True)  # the benchmark's own scratch: a re-measurement replaces it
    cmd = [sys.executable, "-m", "privtune_ray.cli", "attack", CONFIG, "--out", str(runs / key)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    summary = json.loads((runs / key / "summary.json").read_text())
    setup = summary["attack_setup"]
    result = {
        "point": point,
        "aux": aux,
        "names": names,
        "epochs": epochs,
        "overrides": overrides,
        "aux_sentences": setup["aux_sentences"],
        "aux_dropped_as_victims": setup["aux_dropped_as_victims"],
        "aux_corpora": setup["aux_corpora"],
        "max_eia_asr_top1": summary["max_eia_asr_top1"],
        "asr_top1": {n: a["asr_top1"] for n, a in summary["attacks"].items() if a["kind"] == "inversion"},
        "asr_top5": {n: a["asr_top5"] for n, a in summary["attacks"].items() if a["kind"] == "inversion"},
        "fit_s": {n: a["fit_s"] for n, a in summary["attacks"].items()},
        "peak_rss_mb": setup["peak_rss_mb"],
        "wall_s": time.perf_counter() - start,
        "victims": summary["victims"],
    }
    (runs / key / "bench_point.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def collected(runs: Path, results: dict) -> dict:
    """``results`` with every point measured under ``runs`` (each run keeps its own record): points measured by
    processes that ran side by side all land in the one file."""
    for path in sorted(runs.glob("*/bench_point.json")):
        results[path.parent.name] = json.loads(path.read_text())
    return results


def run_key(point: str, aux: str, epochs: int, names: list[str] | None) -> str:
    """A result's key: the point, the public text and epochs, and the attacks where not the config's."""
    return f"{point}-aux{aux}-ep{epochs}" + (f"-{'+'.join(names)}" if names else "")


def saturation(results: dict) -> dict:
    """Per (point, epochs): max top-1 ASR of CURVE_ATTACKS over public text in order, the last step's gain per
    doubling of public text (Δ ASR / log2 of the sentences' ratio), and whether it is <= 1 point (an undefended point
    at 100 % is saturated however little text it had)."""
    order = {"2000": 0, "8000": 1, "32000": 2, "all": 3}
    curves: dict[str, dict] = {}
    for r in results.values():
        if not all(a in r["asr_top1"] for a in CURVE_ATTACKS):
            continue  # a run without the strongest inverters (the memory check) is no point of a curve
        best = max(r["asr_top1"][a] for a in CURVE_ATTACKS)
        rows = curves.setdefault(f"{r['point']}-ep{r['epochs']}", {})
        if str(r["aux"]) not in rows or best > rows[str(r["aux"])][0]:
            rows[str(r["aux"])] = (best, r)
    out = {}
    for name, rows in curves.items():
        ordered = sorted(rows.values(), key=lambda row: order.get(str(row[1]["aux"]), 99))
        asr = [best for best, _ in ordered]
        sentences = [r["aux_sentences"] for _, r in ordered]
        # the last step's gain per doubling of public text: 2k -> 8k -> 32k are two doublings each
        per_doubling = (asr[-1] - asr[-2]) / math.log2(sentences[-1] / sentences[-2]) if len(asr) >= 2 else None
        out[name] = {
            "aux": [r["aux"] for _, r in ordered],
            "aux_sentences": sentences,
            "max_top1_strongest": asr,
            "last_gain_per_doubling": per_doubling,
            "saturated": (per_doubling is not None and per_doubling <= SATURATION_POINTS)
            or (bool(asr) and asr[-1] >= 0.99),
        }
    return out


def overlap() -> dict:
    """How much of SST-2's training split the containment filter drops: against the dev victims (``attack``), and
    against the devices' phrases when the attacker's 2,000 are carved out of the split (``train``/``simulate``)."""
    import numpy as np

    from privtune_ray.data import load_split
    from privtune_ray.data.overlap import contained_in

    train, dev = list(load_split("sst2", "train")["text"]), list(load_split("sst2", "dev")["text"])
    order = np.random.default_rng(17).permutation(len(train))  # carve_aux's draw at seed 0
    carved, devices = [train[i] for i in order[:2000]], [train[i] for i in order[2000:]]
    return {
        "sst2_train_phrases": len(train),
        "inside_a_dev_sentence": int(contained_in(train, dev).sum()),
        "carve_2000_inside_a_devices_phrase": int(contained_in(carved, devices).sum()),
    }


def large_fit(result: dict) -> str:
    """The large inverter's fit seconds of a point, or blank where it did not run."""
    seconds = result["fit_s"].get("eia_transformer_large")
    return "" if seconds is None else f"{seconds:.0f}"


def table(record: dict) -> str:
    """The measured points as the markdown table docs/attacker.md quotes (``--table``)."""
    attacks = list(dict.fromkeys(a for r in record["results"].values() for a in r["asr_top1"]))
    lines = [
        "| point | public text | epochs | " + " | ".join(attacks) + " | max | fit s (large) | wall s | peak MiB |",
        "|---" * (len(attacks) + 7) + "|",
    ]
    for r in record["results"].values():
        cells = [f"{100 * r['asr_top1'][a]:.1f}" if a in r["asr_top1"] else "" for a in attacks]
        lines.append(
            f"| {r['point']} | {r['aux_sentences']:,} ({r['aux']}) | {r['epochs']} | "
            + " | ".join(cells)
            + f" | **{100 * r['max_eia_asr_top1']:.1f}** | {large_fit(r)} | "
            f"{r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--aux", nargs="+", default=["2000", "8000", "32000", "all"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[4])
    parser.add_argument("--names", nargs="+", help="attacks in place of the config's (a run kept off the curves)")
    parser.add_argument("--runs", default="runs/attacker", help="where the attack runs go")
    parser.add_argument("--threads", type=int, help="torch threads per attack process (train.threads)")
    parser.add_argument("--out", default="benchmarks/results/attacker.json")
    parser.add_argument("--table", action="store_true", help="print --out's points as a markdown table and stop")
    parser.add_argument("--collect", action="store_true", help="merge the points measured under --runs and stop")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(json.loads(out.read_text())))
        return
    overlap_stats = overlap()
    if args.collect:
        write_record(out, Path(args.runs), overlap_stats)
        return
    for point in args.points:
        for aux in args.aux:
            for epochs in args.epochs:
                measure(point, aux, epochs, Path(args.runs), args.names, args.threads)
                write_record(out, Path(args.runs), overlap_stats)


def write_record(out: Path, runs: Path, overlap_stats: dict) -> None:
    """``out`` with its points and every point measured under ``runs``, the curves and the provenance."""
    previous = json.loads(out.read_text()) if out.is_file() else {}
    results = collected(runs, previous.get("results", {}))
    record = {
        "benchmark": "attacker",
        "config": CONFIG,
        "victims": "SST-2 dev, attack.victim_samples of them (seed 0)",
        "overlap": overlap_stats,
        "results": results,
        "curves": saturation(results),
        "versions": package_versions(),
        "git": git_revision(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({len(results)} points)", flush=True)


if __name__ == "__main__":
    main()
