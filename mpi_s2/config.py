"""The configuration of one ``compose`` run: a plain value built by the CLI (or by a caller in Python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .profiles import DEFAULT_PROFILE
from .radiometry import Stretch


@dataclass(frozen=True)
class ComposeConfig:
    red: str
    green: str
    blue: str
    output: str
    stretch: Stretch = field(default_factory=Stretch)
    alpha: bool = True
    window: int | None = None
    profile: str = DEFAULT_PROFILE
    creation_options: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False
    report: str | None = None
    progress: bool = True

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.red, self.green, self.blue)

    @property
    def band_count(self) -> int:
        return 4 if self.alpha else 3
