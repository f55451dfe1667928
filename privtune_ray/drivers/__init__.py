"""The commands' drivers, above the library: each joins the packages below it into one command's run.

train.py     ``privtune-ray train``: one process, the design's device and cloud halves in one loop (``run_training``)
simulate.py  ``privtune-ray simulate``: the coordinator's round loop over the actor pool (``run_simulation``)
attack.py    ``privtune-ray attack``: the attack suite on a bottom's uploads of a dev split (``run_attack_evaluation``)

Nothing in ``simulation/``, ``training/``, ``attacks/``, ``designs/`` or ``mechanisms/`` imports a driver or the
config checks (``checks.py``): the import-linter contracts in ``pyproject.toml`` keep it so (``make lint``).
"""
