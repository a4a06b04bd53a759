"""Energy = sum over actions of count x the action's energy (priced by the components of
romsim.area.model), plus leakage over time."""

from __future__ import annotations

from romsim.area.model import blocks
from romsim.config import ChipConfig
from romsim.perf.actions import ACTIONS, check_action


def action_energy_j(chip: ChipConfig) -> dict[str, float]:
    """Joules per action at the configured node, from the component that performs it."""
    out: dict[str, float] = {}
    for b in blocks(chip):
        for k, v in b.actions.items():
            if k in out:
                raise ValueError(f"action {k!r} priced by two components")
            out[check_action(k)] = v
    missing = set(ACTIONS) - set(out)
    if missing:
        raise ValueError(f"no component prices {sorted(missing)}")
    return out


def dynamic_energy_j(chip: ChipConfig, counts: dict[str, float]) -> dict[str, float]:
    """Energy of each counted action (an unknown key raises)."""
    e = action_energy_j(chip)
    return {check_action(k): v * e[k] for k, v in counts.items()}
