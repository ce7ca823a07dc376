from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.runtime import ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    pass
