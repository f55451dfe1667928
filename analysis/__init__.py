"""Plots and a Markdown report from privtune-ray sweep and run directories.

    tables          find sweeps / simulation runs / train runs under a folder and load them
    style           one place for figures: panels, labels, legends, colours, saving PNGs
    frontier        privacy–utility frontier (max EIA ASR vs dev accuracy) and ``pareto_front``
    attack_success  ASR (and attribute advantage) per attack for one chosen point per mechanism
    communication   uplink bytes per sample per mechanism and split depth (sweeps, simulations)
    overhead        per-device cost by tier of a simulation (bytes, compute, simulated time)
    timeline        Gantt chart of one simulated round
    headline        best utility under an ASR threshold per mechanism, and a Markdown table formatter
    seeds           settings over seeds (mean ± std) and the frontier over seeds per attacker model
    report          ``write_report``: everything above into PNGs and ``report.md``

Run ``python -m analysis DIR [--out OUT]`` (or ``privtune-ray report DIR``).
"""
