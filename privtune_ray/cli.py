"""``privtune-ray`` command line.

    privtune-ray train simulations/sst2_baseline.yaml --set train.max_steps=30 --out runs/x
    privtune-ray train simulations/sst2_baseline.yaml --out runs/x --resume
    privtune-ray simulate simulations/sst2_devices.yaml --set simulation.backend=ray --out runs/sim
    privtune-ray simulate simulations/sst2_devices.yaml --address auto      # on a running Ray cluster
    privtune-ray attack simulations/sst2_attacks.yaml --set mechanism.name=privtune --out runs/a
    privtune-ray account simulations/sst2_privtune.yaml
    privtune-ray account --sample-rate 0.01 --noise-multiplier 1.0 --steps 1000
    privtune-ray datasets
"""

from __future__ import annotations

import argparse
import sys

from .errors import PrivtuneError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privtune-ray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="split fine-tuning, single process (the reference run)")
    simulate = sub.add_parser("simulate", help="split fine-tuning across many simulated devices (in-process or on Ray)")
    attack = sub.add_parser("attack", help="the attack suite against the eval split's messages (no training)")
    for command in (train, simulate, attack):
        command.add_argument("config", help="YAML config, e.g. simulations/sst2_baseline.yaml")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config key, e.g. --set train.max_steps=30 (repeatable)")  # fmt: skip
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
    account.add_argument("--target-epsilon", type=float, help="DP-SGD: calibrate sigma for this epsilon (Edgeworth)")

    sub.add_parser("datasets", help="list the datasets and where they are read from")
    return parser


def _config(args):
    from .config import load_config

    if getattr(args, "resume", False) and not args.out:
        raise PrivtuneError("--resume needs --out DIR, the run directory to continue")
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    return load_config(args.config, overrides)


def _train(args) -> None:
    from .training.loop import run_training

    run_training(_config(args), out=args.out, resume=args.resume)


def _simulate(args) -> None:
    from .simulation import run_simulation

    if args.address:
        args.overrides += ["simulation.backend=ray", f"simulation.address={args.address}"]
    run_simulation(_config(args), out=args.out, resume=args.resume)


def _attack(args) -> None:
    from .attacks.evaluation import run_attack_evaluation

    run_attack_evaluation(_config(args), out=args.out)


def _account(args) -> None:
    import math

    from .accounting import calibrate_sigma, edgeworth_epsilon, pld_epsilon, prv_epsilon, rdp_epsilon
    from .config import load_config
    from .mechanisms import config_guarantee

    if args.config:
        cfg = load_config(args.config, args.overrides)
        releases = cfg.train.epochs
        g = config_guarantee(cfg.mechanism, releases, cfg.model.max_length)
        print(f"mechanism {cfg.mechanism.name} ({g.kind}), {releases} release(s) per sample (train.epochs):")
        print(f"  {g.statement}")
        if g.epsilon is not None:
            print(f"  epsilon (PLD) = {g.epsilon:.4f}, epsilon (RDP) = {g.epsilon_rdp:.4f}, delta = {g.delta:g}")
    dpsgd = (args.sample_rate, args.steps)
    if any(v is not None for v in dpsgd + (args.noise_multiplier, args.target_epsilon)):
        if None in dpsgd:
            raise PrivtuneError("DP-SGD accounting needs --sample-rate and --steps (and --noise-multiplier or --target-epsilon)")
        q, steps, delta = args.sample_rate, args.steps, args.delta
        sigma = args.noise_multiplier
        if args.target_epsilon is not None:
            sigma = calibrate_sigma(args.target_epsilon, delta, q, steps)
            print(f"calibrated sigma = {sigma:.4f} for epsilon = {args.target_epsilon:g} (Edgeworth order 2)")
        if sigma is None:
            raise PrivtuneError("give --noise-multiplier or --target-epsilon")
        print(f"Poisson-subsampled Gaussian: q = {q:g}, sigma = {sigma:g}, T = {steps}, delta = {delta:g}")
        rows = [("Edgeworth order 1", edgeworth_epsilon(delta, q, sigma, steps, 1)),
                ("Edgeworth order 2", edgeworth_epsilon(delta, q, sigma, steps, 2)),
                ("PLD (dp-accounting)", pld_epsilon(delta, q, sigma, steps)),
                ("RDP (dp-accounting)", rdp_epsilon(delta, q, sigma, steps)),
                ("PRV (Opacus)", prv_epsilon(delta, q, sigma, steps))]  # fmt: skip
        pld = rows[2][1]
        for name, eps in rows:
            rel = "" if math.isclose(eps, pld) else f"  ({(eps - pld) / pld:+.1%} vs PLD)"
            print(f"  {name:22s} epsilon = {eps:.4f}{rel}")
    elif not args.config:
        raise PrivtuneError("give a config, or --sample-rate, --steps and --noise-multiplier (or --target-epsilon)")


def _datasets(args) -> None:
    from .data.registry import DATASETS, resolve_data_dir

    root = resolve_data_dir()
    print(f"data directory: {root if root else 'not found (set PRIVTUNE_DATA_DIR or --data-dir)'}")
    for name, spec in DATASETS.items():
        attrs = f"; private attributes: {', '.join(spec.attributes)}" if spec.attributes else ""
        print(f"  {name:22s} {spec.task:14s} splits: {', '.join(spec.splits)}{attrs}\n  {'':22s} {spec.description}")


COMMANDS = {"train": _train, "simulate": _simulate, "attack": _attack, "account": _account, "datasets": _datasets}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except PrivtuneError as exc:
        print(f"privtune-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privtune-ray: interrupted; resume with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
