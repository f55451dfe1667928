"""``privtune-ray`` command line.

privtune-ray train simulations/sst2_baseline.yaml --set train.max_steps=30 --out runs/x
privtune-ray train simulations/sst2_baseline.yaml --out runs/x --resume
privtune-ray simulate simulations/sst2_devices.yaml --set simulation.backend=ray --out runs/sim
privtune-ray simulate simulations/sst2_devices.yaml --address auto      # on a running Ray cluster
privtune-ray attack simulations/sst2_attacks.yaml --set mechanism.name=privtune --out runs/a
privtune-ray account simulations/sst2_privtune.yaml
privtune-ray account --sample-rate 0.01 --noise-multiplier 1.0 --steps 1000
privtune-ray sweep simulations/sst2_headline.yaml --out runs/headline       # the grid as parallel Ray tasks
privtune-ray sweep simulations/sst2_headline.yaml --grid mechanism.eta=5,10 --grid model.split_depth=2
privtune-ray report runs/headline                                             # plots + report.md
privtune-ray datasets
"""

from __future__ import annotations

import argparse
import sys

from .errors import ConfigError, ModelError, PrivtuneError
from .sweep.spec import EXECUTORS

# Each command imports the packages it runs (torch, transformers, ray, the registries) inside its function, after
# its config's schema checks: `--help` and a bad key or type answer without them.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privtune-ray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="split fine-tuning, single process (the reference run)")
    simulate = sub.add_parser("simulate", help="split fine-tuning across many simulated devices (in-process or on Ray)")
    attack = sub.add_parser("attack", help="the attack suite against the eval split's messages (no training)")
    for command in (train, simulate, attack):
        command.add_argument("config", help="YAML config, e.g. simulations/sst2_baseline.yaml")
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.max_steps=30 (repeatable)",
        )
        command.add_argument("--out", help="run directory (default: runs/<name>-<timestamp>)")
        command.add_argument("--data-dir", help="data directory (overrides data.data_dir and $PRIVTUNE_DATA_DIR)")
    for command in (train, simulate):
        command.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    simulate.add_argument("--address", help="Ray cluster address ('auto' or host:port); implies simulation.backend=ray")

    account = sub.add_parser("account", help="privacy guarantees of a config; Edgeworth vs PLD/RDP/PRV for DP-SGD")
    account.add_argument("config", nargs="?", help="YAML config whose mechanism to account for")
    account.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    account.add_argument("--sample-rate", type=float, help="DP-SGD: Poisson sample rate q")
    account.add_argument("--noise-multiplier", type=float, help="DP-SGD: noise multiplier sigma")
    account.add_argument("--steps", type=int, help="DP-SGD: number of steps T")
    account.add_argument("--delta", type=float, default=1e-5, help="delta (default 1e-5)")
    account.add_argument("--target-epsilon", type=float, help="DP-SGD: calibrate sigma for this epsilon")
    account.add_argument(
        "--calibrate-with",
        choices=("edgeworth", "pld"),
        default="edgeworth",
        help="DP-SGD: the accountant --target-epsilon calibrates with (default edgeworth, EW-Tune's)",
    )
    account.add_argument(
        "--prv", action="store_true", help="DP-SGD: add Opacus' PRV accountant's row (imports torch: seconds more)"
    )

    sweep = sub.add_parser(
        "sweep", help="run a grid of configs as parallel Ray tasks and collect one table (sweep.csv)"
    )
    sweep.add_argument(
        "config", help="YAML config with an optional sweep: section, e.g. simulations/sst2_headline.yaml"
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="sweep this key over these values for every point (repeatable; replaces the key in the arms)",
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the base config (repeatable)",
    )
    sweep.add_argument("--out", help="sweep directory (default: runs/<name>-sweep-<timestamp>); rerun it to resume")
    sweep.add_argument("--data-dir", help="data directory (overrides data.data_dir and $PRIVTUNE_DATA_DIR)")
    sweep.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="ray: parallel Ray tasks (default); local: no Ray, --local-workers points at once",
    )
    sweep.add_argument(
        "--local-workers", type=int, help="executor local: points run at once in subprocesses (default 1)"
    )
    sweep.add_argument("--address", help="Ray cluster address ('auto' or host:port); default a local Ray")
    sweep.add_argument("--dry-run", action="store_true", help="list the points and stop")

    report = sub.add_parser("report", help="plots and report.md from a sweep or run directory (or a folder of them)")
    report.add_argument("dir", help="a sweep directory, a run directory, or a folder holding several")
    report.add_argument("--out", help="where report.md and the plots go (default: DIR/report)")
    report.add_argument("--asr-threshold", type=float, default=0.10, help="max EIA ASR of the headline (default 0.10)")

    sub.add_parser("datasets", help="list the datasets and where they are read from")
    return parser


def _config(args):
    """The command's config, loaded and checked: schema, types and ranges first (no torch imported), then the
    registry names (``checks.check_config``, which imports the registries)."""
    from .config import load_config
    from .runs import check_output_dir

    if getattr(args, "resume", False) and not args.out:
        raise PrivtuneError("--resume needs --out DIR, the run directory to continue")
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "out", None):
        check_output_dir(args.out)  # before the model and data load: nothing written, no minutes lost
    from .checks import check_config  # the registries import torch: after the checks that answer without it

    check_config(cfg)
    return cfg


def _train(args) -> None:
    cfg = _config(args)  # a bad key or type answers before torch and transformers are imported
    from .drivers.train import run_training

    run_training(cfg, out=args.out, resume=args.resume)


def _simulate(args) -> None:
    if args.address:
        args.overrides += ["simulation.backend=ray", f"simulation.address={args.address}"]
    cfg = _config(args)
    from .drivers.simulate import run_simulation

    run_simulation(cfg, out=args.out, resume=args.resume)


def _attack(args) -> None:
    cfg = _config(args)
    from .drivers.attack import run_attack_evaluation

    run_attack_evaluation(cfg, out=args.out)


def _account(args) -> None:
    """Print the guarantees. DP-SGD: ε (nats) per accountant at (q, σ, T, δ), PLD as the reference (on a 1e-4 grid:
    the default 1e-3 grid overstates small ε), with a warning line wherever an Edgeworth ε is more than 10 % below
    it and a line, not a number, where the expansion breaks down."""
    import math

    from .checks import check_config
    from .config import load_config
    from .mechanisms.guarantees import config_guarantee

    if args.config:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
        releases = cfg.train.epochs
        g = config_guarantee(cfg.mechanism, releases, cfg.model.max_length)
        print(f"mechanism {cfg.mechanism.name} ({g.kind}), {releases} release(s) per sample (train.epochs):")
        print(f"  {g.statement}")
        if g.epsilon is not None:
            print(f"  epsilon (PLD) = {g.epsilon:.4f}, epsilon (RDP) = {g.epsilon_rdp:.4f}, delta = {g.delta:g}")
        if cfg.design.name == "ewtune":
            _print_dp_sgd_plan(cfg)
    dpsgd = (args.sample_rate, args.steps)
    if any(v is not None for v in dpsgd + (args.noise_multiplier, args.target_epsilon)):
        if None in dpsgd:
            raise PrivtuneError(
                "DP-SGD accounting needs --sample-rate and --steps (and --noise-multiplier or --target-epsilon)"
            )
        from .accounting import (  # dp-accounting and scipy load only when DP-SGD is asked for
            EdgeworthBreakdown,
            SigmaOutOfRange,
            calibrate_sigma,
            calibrate_sigma_pld,
        )
        from .designs.dp_plan import accounted_epsilon

        q, steps, delta = args.sample_rate, args.steps, args.delta
        sigma = args.noise_multiplier
        if args.target_epsilon is not None:
            if args.calibrate_with == "pld":
                sigma = calibrate_sigma_pld(args.target_epsilon, delta, q, steps)
            else:
                try:
                    sigma = calibrate_sigma(args.target_epsilon, delta, q, steps)
                except SigmaOutOfRange as exc:  # its fix "calibrate with the PLD accountant" is this flag
                    hint = " (--calibrate-with pld)" if exc.reason in ("breakdown", "met_at_lo") else ""
                    raise PrivtuneError(f"{exc}{hint}") from None
            name = {"edgeworth": "Edgeworth order 2", "pld": "PLD, dp-accounting"}[args.calibrate_with]
            print(f"calibrated sigma = {sigma:.4f} for epsilon = {args.target_epsilon:g} ({name})")
        if sigma is None:
            raise PrivtuneError("give --noise-multiplier or --target-epsilon")
        print(f"Poisson-subsampled Gaussian: q = {q:g}, sigma = {sigma:g}, T = {steps}, delta = {delta:g}")
        pld = accounted_epsilon("pld", delta, q, sigma, steps, interval=1e-4)
        rows: list[tuple[str, float | None]] = []
        warnings: list[str] = []
        for order in (1, 2):
            name = f"Edgeworth order {order}"
            try:
                eps = accounted_epsilon("edgeworth", delta, q, sigma, steps, order=order)
            except EdgeworthBreakdown:
                rows.append((name, None))
                continue
            rows.append((name, eps))
            if eps < 0.9 * pld:
                warnings.append(
                    f"warning: {name} gives epsilon {eps:.4f}, {(pld - eps) / pld:.0%} below the PLD bound "
                    f"{pld:.4f} (q·T = {q * steps:.3g}): the expansion understates epsilon here; "
                    f"quote the PLD epsilon"
                )
        rows += [
            ("PLD (dp-accounting)", pld),
            ("RDP (dp-accounting)", accounted_epsilon("rdp", delta, q, sigma, steps)),
        ]
        if args.prv:  # Opacus' PRV accountant imports torch: only when asked for
            rows.append(("PRV (Opacus)", accounted_epsilon("prv", delta, q, sigma, steps)))
        for name, row_eps in rows:
            if row_eps is None:
                print(
                    f"  {name:22s} breaks down: claims (0, {delta:g})-DP at q·T = {q * steps:.3g} expected releases per "
                    f"sample, where PLD gives epsilon {pld:.4f}; quote the PLD epsilon"
                )
                continue
            rel = "" if math.isclose(row_eps, pld) else f"  ({(row_eps - pld) / pld:+.1%} vs PLD)"
            print(f"  {name:22s} epsilon = {row_eps:.4f}{rel}")
        for line in warnings:
            print(line)
    elif not args.config:
        raise PrivtuneError("give a config, or --sample-rate, --steps and --noise-multiplier (or --target-epsilon)")


def _print_dp_sgd_plan(cfg) -> None:
    """EW-Tune's DP-SGD plan of ``train`` for this config, as the run would calibrate it (the training split's N,
    less the attacker's carve-out): q, T, σ and ε by each accountant, and the warning where Edgeworth understates."""
    from .designs.dp_plan import devices_train_size, train_dp_plan

    n = devices_train_size(cfg)
    _, _, plan = train_dp_plan(cfg, n, cfg.train.max_steps)
    warning = plan.edgeworth_warning()
    print(
        f"design ewtune (train, N = {n} samples): EW-Tune DP-SGD: {plan.describe()}"
        + (f"; {warning}" if warning else "")
    )


def _sweep(args) -> None:
    import time

    from analysis.tables import failed_points

    from .checks import check_config
    from .designs.registry import design_class
    from .models.loading import local_model_depth
    from .runs import check_output_dir
    from .sweep import load_sweep, run_sweep
    from .sweep.spec import point_config

    overrides = list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    base, spec, points = load_sweep(args.config, overrides, args.grid)
    depths: dict[str, int | None] = {}
    for point in points:  # every point's names, and its split of the model, before anything runs
        try:
            cfg = point_config(base, point)
            check_config(cfg)
            if cfg.model.name not in depths:
                depths[cfg.model.name] = local_model_depth(cfg.model.name)
            depth = depths[cfg.model.name]
            if depth is not None:  # a model with no local config is checked when its point loads it
                design_class(cfg)(cfg).check_depth(depth)
        except (ConfigError, ModelError) as exc:
            raise type(exc)(f"sweep point {point.slug!r}: {exc}") from None
    spec.executor = args.executor or spec.executor
    spec.address = args.address or spec.address
    spec.local_workers = args.local_workers or spec.local_workers
    spec.validate()
    if args.dry_run:
        for p in points:
            print(f"{p.slug:40s} {' '.join(p.override_args())}")
        print(f"{len(points)} points ({spec.runner}, {spec.executor})")
        return
    out = args.out or f"runs/{base.get('name', 'run')}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_dir(out)
    run_sweep(base, spec, points, out)
    failed = list(failed_points(out)["point"])
    if failed:
        raise PrivtuneError(f"{len(failed)} point(s) failed: {', '.join(failed)}; their logs are in {out}/points/")
    print(f"privtune-ray: wrote {out}/sweep.csv; `privtune-ray report {out}` plots it")


def _report(args) -> None:
    from analysis.report import write_report

    from .runs import check_output_dir

    if args.out:
        check_output_dir(args.out)
    path = write_report(args.dir, args.out, asr_threshold=args.asr_threshold)
    print(f"privtune-ray: wrote {path}")


def _datasets(args) -> None:
    from .data.registry import DATASETS, resolve_data_dir

    root = resolve_data_dir()
    print(f"data directory: {root if root else 'not found (set PRIVTUNE_DATA_DIR or --data-dir)'}")
    for name, spec in DATASETS.items():
        attrs = f"; private attributes: {', '.join(spec.attributes)}" if spec.attributes else ""
        print(f"  {name:22s} {spec.task:14s} splits: {', '.join(spec.splits)}{attrs}\n  {'':22s} {spec.description}")


COMMANDS = {
    "train": _train,
    "simulate": _simulate,
    "attack": _attack,
    "sweep": _sweep,
    "report": _report,
    "account": _account,
    "datasets": _datasets,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except PrivtuneError as exc:
        print(f"privtune-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command" if args.command == "sweep" else "the same command plus --resume"
        print(f"privtune-ray: interrupted; resume with {again}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
