"""ViewSpec: the clip one model sees (frame count, temporal stride, crop size, normalisation)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The name of the student's view in every batch (``batch["inputs"][STUDENT_VIEW]``); each teacher's
# view is named after its role. The one spelling of it in the code base.
STUDENT_VIEW = "student"


class ViewSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(gt=0)
    sampling_rate: int = Field(gt=0)
    crop_size: int = Field(gt=0)
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(std) <= 0:
            raise ValueError(f"std must be > 0 per channel, got {std}")
        return std

    @property
    def span(self) -> int:
        """Source frames one clip covers: frames x sampling_rate."""
        return self.frames * self.sampling_rate

    @classmethod
    def from_spec(cls, spec: Any) -> "ViewSpec":
        """From any object with frames/sampling_rate/crop_size/mean/std (e.g. a ModelSpec)."""
        return cls(frames=spec.frames, sampling_rate=spec.sampling_rate, crop_size=spec.crop_size,
                   mean=tuple(spec.mean), std=tuple(spec.std))
