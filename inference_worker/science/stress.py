"""Stress conditions: the world differing from the nominal simulator, one departure at a time.

Each condition changes the simulator's configuration alone (FM and CW signals, 0.3 and 1 s
captures at 48 kHz) and says what the yardstick needs to be given the same conditions: the grid
posterior is built from the changed configuration (it knows the true propagation, power range
and region), over a region grown to where the emitters are, and measures received power over a
band wide enough for the oscillators' errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from inference_worker.science.simulator import SimulatorConfig

OUTSIDE_M = 40_000.0
"""Emitters of the ``outside`` condition lie up to this far outside the region."""
FAR_OUTSIDE_M = 20_000.0
"""Emitters more than this far outside the region are the ones the ``outside_region`` caution
is measured on (the evaluation's "far outside flagged", the calibration's report)."""


@dataclass(frozen=True)
class Condition:
    name: str
    description: str
    changes: dict[str, object] = field(default_factory=dict)
    grow_m: float = 0.0
    """How far beyond the region emitters are drawn (uniformly over the grown box)."""
    baseline_band_hz: float = 12_000.0

    def config(self, nominal: SimulatorConfig, inside_share: float) -> SimulatorConfig:
        """The changed configuration; ``inside_share``: the region's share of the grown box,
        so that drawing outside for the rest makes emitters uniform over the grown box."""
        changes = dict(self.changes)
        if self.grow_m > 0:
            changes.update(
                outside_fraction=1.0 - inside_share,
                outside_scale_m=1e12,  # uniform: no decay with the distance
                outside_max_m=self.grow_m,
            )
        return replace(nominal, **changes)  # type: ignore[arg-type]


CONDITIONS = (
    Condition("nominal", "the simulator's own world (reference row)"),
    Condition("outside", "emitters up to 40 km outside the region", grow_m=OUTSIDE_M),
    Condition(
        "propagation",
        "shadowing 9 dB, path-loss exponent 3.5",
        {"shadowing_sigma_db": 9.0, "path_loss_exponent": 3.5},
    ),
    Condition(
        "oscillators",
        "receiver oscillators off by up to ±50 ppm (±7.3 kHz at 145.5 MHz)",
        {"oscillator_ppm": 50.0},
        baseline_band_hz=12_000.0 + 2 * 50.0 * 145.5,
    ),
    Condition(
        "tx_power", "transmit power 10-60 dBm instead of 20-50", {"tx_power_dbm": (10.0, 60.0)}
    ),
    Condition(
        "overload",
        "receivers overloaded: ADC full scale at -70 dBm, strong signals clip",
        {"full_scale_dbm": -70.0},
    ),
    Condition(
        "interference",
        "one receiver of each capture hears an interfering burst",
        {"interference_probability": 1.0},
    ),
)
