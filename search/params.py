"""A trial's parameters: what the sampler proposed, typed (the define-by-run space is ``Space.suggest``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TrialParams:
    """A trial's settings, read from the flat config Ray/Optuna proposed."""

    resolution: int
    pruning_schedule: str
    quantization: str
    target_sparsity: float | None = None  # only when pruning unstructured
    pruning_structure: str | None = None  # only when pruning
    calibration_size: int | None = None  # only for modes that calibrate
    float_layers: int | None = None  # only for selective quantization: most sensitive ops kept float

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialParams:
        return cls(**{k: v for k, v in config.items() if k in cls.names()})

    def as_dict(self) -> dict[str, Any]:
        """The parameters that were set (a parameter that had no effect is left out)."""
        return {name: getattr(self, name) for name in self.names() if getattr(self, name) is not None}

    def describe(self) -> str:
        prune = "no pruning" if self.pruning_schedule == "none" else f"{self.pruning_schedule} {self.target_sparsity or 0.5:.2f} {self.pruning_structure}"
        calibration = f" cal={self.calibration_size}" if self.calibration_size else ""
        floats = f" float={self.float_layers}" if self.float_layers else ""
        return f"{self.resolution}px, {prune}, {self.quantization}{calibration}{floats}"
