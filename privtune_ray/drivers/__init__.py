"""The commands' drivers, above the library: each joins the packages below it into one command's run.

engine.py    the one engine: rounds over a population of virtual devices, for any design (``run_engine``): plan,
             the devices' tasks on the workers, the design's cloud round on the replicas, the clock, the records,
             checkpoints, evaluations and attacks
simulate.py  ``privtune-ray simulate``: the engine on the configured population (``run_simulation``)
train.py     ``privtune-ray train``: the engine on one device that holds the whole training split
             (``engine.one_device``); a generation task on its own single-process loop (``run_generation``)
attack.py    ``privtune-ray attack``: the attack suite on a bottom's uploads of a dev split (``run_attack_evaluation``)
tasks.py     what a run trains on: the task's dataset spec, its tokenised splits, the top's torch device

Nothing in ``simulation/``, ``training/``, ``attacks/``, ``designs/`` or ``mechanisms/`` imports a driver or the
config checks (``checks.py``): the import-linter contracts in ``pyproject.toml`` keep it so (``make lint``).
"""
