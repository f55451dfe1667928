"""Config loading: every key checked, overrides typed, one clear error naming the key.

``load_config`` checks the schema, types and ranges without any feature package; ``check_config`` the names that
only a registry knows (dataset, partitioner, mechanism, attacks)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from privtune_ray.checks import check_config
from privtune_ray.cli import main
from privtune_ray.config import Config, load_config, read_config_file
from privtune_ray.errors import ConfigError
from privtune_ray.sweep import load_sweep
from privtune_ray.sweep.spec import point_config

# Every run config in simulations/ (cluster.yaml is the Ray cluster launcher's, checked in test_simulation_ray.py).
ROOT = Path(__file__).parents[1] / "simulations"
SIMULATIONS = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "cluster.yaml")
RUNS = [p for p in SIMULATIONS if "sweep" not in read_config_file(p)]


@pytest.mark.parametrize("path", SIMULATIONS, ids=[str(p.relative_to(ROOT)) for p in SIMULATIONS])
def test_every_shipped_config_loads(path):
    if path in RUNS:
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        check_config(cfg)
    else:  # a sweep: every one of its points is a valid config
        base, _, points = load_sweep(path)
        assert points
        for point in points:
            check_config(point_config(base, point))


def test_overrides_are_parsed_and_typed():
    cfg = load_config(
        RUNS[0],
        [
            "train.max_steps=30",
            "train.lr=3e-4",
            "data.max_eval_samples=null",
            "train.lora.enabled=true",
            "train.lora.target_modules=[query, value]",
        ],
    )
    assert cfg.train.max_steps == 30 and cfg.train.lr == 3e-4 and cfg.data.max_eval_samples is None
    assert cfg.train.lora.enabled and cfg.train.lora.target_modules == ["query", "value"]
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lrr=1e-4", r"unknown config key 'train.lrr'.*lr"),
        ("modell.name=x", r"unknown config key 'modell'"),
        ("train.max_steps=ten", r"'train.max_steps' must be of type int"),
        ("train.max_steps=-3", r"'train.max_steps'.*>= 1"),
        ("model.split_depth=-1", r"'model.split_depth'"),
        ("train.lr=0", r"'train.lr'.*> 0"),
        ("train.lora=3", r"'train.lora' must be a section"),
        ("train.lora.enabled=maybe", r"'train.lora.enabled' must be of type bool"),
        ("seed=-1", r"'seed'"),
        ("train.max_steps", r"must look like key=value"),
        ("simulation.worker_resources=[device_node]", r"'simulation.worker_resources' must be a mapping"),
        ("simulation.worker_resources={device_node: many}", r"'simulation.worker_resources.device_node' must be of"),
        ("simulation.replica_resources={GPU: 1}", r"'simulation.replica_resources.GPU'.*replica_gpus"),
        ("simulation.replica_resources={top_node: -1}", r"'simulation.replica_resources.top_node'.*>= 0"),
        ("simulation.placement_timeout_s=0", r"'simulation.placement_timeout_s'.*> 0"),
        ("simulation.replacement_timeout_s=-1", r"'simulation.replacement_timeout_s'.*> 0"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(RUNS[0], [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("simulations/no-such.yaml")


@pytest.mark.parametrize(
    "override,match",
    [
        ("mechanism.eta=0", r"'mechanism.eta'.*> 0"),
        ("mechanism.eta=-5", r"'mechanism.eta'"),
        ("mechanism.noise_multiplier=0", r"'mechanism.noise_multiplier'"),
        ("mechanism.delta=1.5", r"'mechanism.delta'.*\(0, 1\)"),
        ("mechanism.s_min=0", r"'mechanism.s_min'"),
        ("mechanism.n_hops=0", r"'mechanism.n_hops'"),
    ],
)
def test_bad_mechanism_values_name_the_key(override, match):
    cfg = load_config(RUNS[0], [override])  # the schema holds; the mechanisms' own parameter dataclasses refuse it
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("design.dcor_weight=-0.5", r"'design.dcor_weight'.*>= 0"),  # GuardedParams
        ("design.emulator_keep=0", r"'design.emulator_keep'.*\(0, 1\]"),
        ("design.edgeworth_order=3", r"'design.edgeworth_order'.*1 or 2"),  # EWTuneParams
        ("attack.epochs=0", r"'attack.epochs'.*>= 1"),  # InverterParams
        ("attack.opt_temperature=0", r"'attack.opt_temperature'.*> 0"),  # OptimisationParams
        ("attack.probe_lr=0", r"'attack.probe_lr'.*> 0"),  # ProbeParams
        ("attack.keywords=0", r"'attack.keywords'.*>= 1"),  # KeywordParams
        ("mechanism.pgd_step_size=0", r"'mechanism.pgd_step_size'.*> 0"),  # PrivTuneParams
        ("design.grad_up_noise_multiplier=-1", r"'design.grad_up_noise_multiplier'.*>= 0"),  # the label defence
        ("design.grad_up_clip_norm=0", r"'design.grad_up_clip_norm'.*> 0"),
        ("design.grad_up_noise_multiplier=1", r"'design.grad_up_noise_multiplier'.*needs design.grad_up_clip_norm"),
    ],
)
def test_each_variants_own_keys_are_checked_by_its_parameter_dataclass(override, match):
    """Whichever variant the run selects: a bad value is refused now, not met when `name` changes later."""
    cfg = load_config(RUNS[0], [override])
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)


def test_every_variants_parameter_dataclass_reads_keys_of_its_section():
    from privtune_ray.attacks.registry import ATTACK_CLASSES
    from privtune_ray.designs.registry import DESIGNS
    from privtune_ray.mechanisms.registry import MECHANISMS

    cfg = Config()
    variants = [(cfg.mechanism, MECHANISMS.values()), (cfg.design, DESIGNS.values()), (cfg.attack, ATTACK_CLASSES)]
    seen = 0
    for section, classes in variants:
        for cls in classes:
            params = cls.Params.of(section)  # every field is a key of the section, read with its default
            assert all(getattr(params, f) == getattr(section, f) for f in vars(params))
            seen += len(vars(params))
    assert seen >= 30


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  lr: [1e-4\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml', line \d+, column \d+: not valid YAML .*fix the file"):
        load_config(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


@pytest.mark.parametrize("override", ["mechanism.eta=.inf", "train.lr=.nan", "design.target_epsilon=-.inf"])
def test_a_non_finite_number_is_refused_everywhere(override):
    with pytest.raises(ConfigError, match=f"'{override.split('=')[0]}' must be a finite number"):
        load_config(None, [override])


def test_more_devices_per_round_than_devices_is_refused():
    with pytest.raises(ConfigError, match=r"devices_per_round.*8 devices per round out of simulation.devices=5"):
        load_config(None, ["simulation.devices=5", "simulation.devices_per_round=8"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("data.dataset=imdb", r"'data.dataset'.*unknown dataset 'imdb'; choose one of \[.*'sst2'"),
        ("mechanism.name=rot13", r"'mechanism.name'.*unknown mechanism 'rot13'; choose one of \[.*'privtune'"),
        ("simulation.partition=round-robin", r"'simulation.partition'.*choose one of \['dirichlet', 'iid'"),
        (
            "attack.names=[eia_magic]",
            r"'attack.names'.*unknown attack 'eia_magic'; choose from .* 'auto' \(the quick set\) or 'all'",
        ),
        ("attack.aux_dataset=imdb", r"'attack.aux_dataset'.*unknown dataset 'imdb'"),
        ("attack.names=[gm_label]", r"'attack.names'.*'gm_label' reads per-sample gradients.*design.name=online"),
    ],
)
def test_a_name_no_registry_holds_is_refused_naming_the_key(override, match):
    cfg = load_config(RUNS[0], [override])  # the schema is fine: only the registry knows the name
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)
    check_config(load_config(RUNS[0]))


def test_the_cli_refuses_an_unknown_name_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", str(RUNS[0]), "--out", str(out), "--set", "mechanism.name=rot13"]) == 2
    assert "unknown mechanism 'rot13'" in capsys.readouterr().err and not out.exists()
    assert main(["account", str(RUNS[0]), "--set", "data.dataset=imdb"]) == 2
    assert "unknown dataset 'imdb'" in capsys.readouterr().err


def test_gradient_matching_is_a_name_on_the_design_that_returns_gradients():
    check_config(load_config(None, ["design.name=online", "attack.names=[eia_knn_l2, gm_label]"]))


def _imports(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after ``code``."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_the_schema_imports_no_feature_package():
    loaded = _imports("from privtune_ray.config import load_config\nload_config('simulations/sst2_quick.yaml')")
    assert not loaded & {"torch", "transformers", "ray", "opacus", "dp_accounting"}, loaded


@pytest.mark.parametrize(
    "order",
    [
        "privtune_ray.attacks.registry, privtune_ray.config",
        # config first cannot cycle: it imports no feature package (test_the_schema_imports_no_feature_package)
        pytest.param("privtune_ray.config, privtune_ray.attacks.registry", marks=pytest.mark.slow),
    ],
)
def test_config_and_attacks_import_in_either_order(order):
    first, second = order.split(", ")
    assert {"privtune_ray", "torch"} <= _imports(f"import {first}\nimport {second}\nimport privtune_ray.checks")


def test_the_config_checks_import_no_feature_package():
    """Every name and every variant's key is checked from the light ``params`` modules, so that a bad value answers
    in about a second; each case below fails before the check passes a torch import."""
    code = (
        "from privtune_ray.config import load_config\nfrom privtune_ray.checks import check_config\n"
        "from privtune_ray.errors import ConfigError\n"
        "check_config(load_config('simulations/sst2_quick.yaml'))\n"
        "for bad in ['mechanism.eta=-1', 'design.dcor_weight=-1', 'attack.opt_lr=0', 'design.name=ewtune', "
        "'train.denoiser.kind=cnn']:\n"
        "    extra = ['model.task=causal-lm', 'model.lm_head=device'] if bad == 'design.name=ewtune' else []\n"
        "    try:\n"
        "        check_config(load_config('simulations/sst2_quick.yaml', [bad, *extra]))\n"
        "    except ConfigError:\n"
        "        continue\n"
        "    raise SystemExit(f'{bad} passed')"
    )
    loaded = _imports(code)
    assert not loaded & {"torch", "transformers", "ray", "opacus", "dp_accounting"}, loaded


def test_account_imports_no_torch_for_an_ewtune_config_or_a_dp_sgd_schedule():
    """``privtune-ray account`` plans EW-Tune's DP-SGD (N counted from the data's rows, σ calibrated by PLD) and
    answers ``--sample-rate --steps --target-epsilon`` without torch, transformers, Ray or Opacus; ``--prv`` adds
    Opacus' row."""
    code = (
        "import contextlib, io\nfrom privtune_ray.cli import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['account', 'simulations/sst2_ewtune.yaml', '--set', 'data.max_train_samples=20000']) == 0\n"
        "    assert main(['account', '--sample-rate', '0.01', '--steps', '100', '--target-epsilon', '3']) == 0\n"
        "assert 'N = 20000 samples' in out.getvalue() and 'PLD (dp-accounting)' in out.getvalue(), out.getvalue()\n"
        "assert 'PRV' not in out.getvalue()"
    )
    loaded = _imports(code)
    assert not loaded & {"torch", "transformers", "ray", "opacus"}, loaded


def test_the_light_registries_name_the_same_variants_and_dataclasses_as_the_full_ones():
    from privtune_ray.attacks.params import ATTACK_PARAMS
    from privtune_ray.attacks.registry import ATTACK_CLASSES, ATTACKS, GRADIENT_ATTACKS
    from privtune_ray.attacks.registry import gradient_matching as gm
    from privtune_ray.config import DENOISER_KINDS, WARM_START_OBJECTIVES
    from privtune_ray.designs.params import DESIGN_PARAMS, RETURNS_GRADIENTS
    from privtune_ray.designs.registry import DESIGNS
    from privtune_ray.mechanisms.params import MECHANISM_PARAMS
    from privtune_ray.mechanisms.registry import MECHANISMS
    from privtune_ray.models.denoiser import DENOISERS
    from privtune_ray.training.warm_start import OBJECTIVES

    assert {n: c.Params for n, c in MECHANISMS.items()} == MECHANISM_PARAMS
    assert {n: c.Params for n, c in DESIGNS.items()} == DESIGN_PARAMS
    assert {n for n, c in DESIGNS.items() if c.returns_gradients} == RETURNS_GRADIENTS
    assert set(ATTACKS) == set(ATTACK_PARAMS) and GRADIENT_ATTACKS == {gm.NAME}
    assert {c.Params for c in ATTACK_CLASSES} == set(ATTACK_PARAMS.values())
    assert set(WARM_START_OBJECTIVES) == set(OBJECTIVES) and set(DENOISER_KINDS) == {"none", *DENOISERS}


def test_an_attack_preset_sets_the_budget_over_the_files_and_under_set(tmp_path):
    quick = load_config("simulations/sst2_attacks.yaml")
    assert quick.attack.preset == "quick" and quick.attack.aux_samples == 2000 and quick.attack.aux_corpora == []
    strong = load_config("simulations/sst2_attacks.yaml", ["attack.preset=saturated"])
    # the file's aux_samples: 2000 and names: [auto] give way to the named preset
    assert strong.attack.names == ["all"] and strong.attack.aux_samples is None
    assert "ag_news:train" in strong.attack.aux_corpora
    mine = load_config("simulations/sst2_attacks.yaml", ["attack.aux_samples=8000", "attack.preset=saturated"])
    assert mine.attack.aux_samples == 8000 and mine.attack.names == ["all"]  # --set wins, in any order
    with pytest.raises(ConfigError, match=r"'attack.preset' is 'huge': use one of quick, saturated"):
        load_config(None, ["attack.preset=huge"])
    # a sweep: the base's --set survive the base's preset, and an arm's preset applies to its points only
    path = tmp_path / "s.yaml"
    path.write_text(
        "extends: " + str(Path("simulations/sst2_attacks.yaml").resolve()) + "\n"
        "sweep:\n  arms:\n    - {attack.preset: [quick]}\n    - {attack.preset: [saturated]}\n"
    )
    base, _, points = load_sweep(path, ["attack.epochs=2"])
    configs = {point_config(base, p).attack.preset: point_config(base, p).attack for p in points}
    assert configs["quick"].aux_samples == 2000 and configs["saturated"].aux_samples is None
    assert configs["saturated"].epochs == 2
    base, _, points = load_sweep(tmp_path / "s.yaml", ["attack.preset=saturated", "attack.aux_samples=8000"])
    assert point_config(base, points[0]).attack.aux_samples == 8000


@pytest.mark.parametrize("command", ["train", "simulate", "attack", "sweep"])
def test_an_output_path_that_is_a_file_or_cannot_be_made_is_one_line_before_anything_runs(command, tmp_path, capsys):
    existing = tmp_path / "results.csv"
    existing.write_text("keep me\n")
    config = str(ROOT / "sst2_headline.yaml") if command == "sweep" else str(RUNS[0])
    for out, match in [(existing, "is a file, not a directory"), (existing / "run", "cannot be created: .* is a file")]:
        assert main([command, config, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
    assert existing.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_report_into_a_file_is_refused_and_an_unmakeable_directory_is_one_line(tmp_path, capsys):
    from privtune_ray.runs import make_output_dir

    existing = tmp_path / "report.md"
    existing.write_text("keep me\n")
    assert main(["report", str(tmp_path), "--out", str(existing)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and existing.read_text() == "keep me\n"
    with pytest.raises(ConfigError, match=r"--out '/proc/.*' cannot be created \(.*\): choose another path"):
        make_output_dir(Path("/proc/privtune-ray-test/run"))  # a virtual file system refuses even root
