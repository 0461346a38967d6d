"""Deterministic engines for tests: counter-based randomness and a small call helper."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.events import Effect, Waiting


def counter_bytes() -> Callable[[int], bytes]:
    """Distinct, reproducible "random" bytes: a counter, big-endian."""
    counter = itertools.count(1)

    def draw(size: int) -> bytes:
        return next(counter).to_bytes(size, "big")

    return draw


def make_engine(now: float = 1000.0, **settings: Any) -> Engine:
    settings.setdefault("server_id", "s1")
    return Engine(EngineConfig(**settings), random_bytes=counter_bytes(), now=now)


class Driver:
    """Calls engine operations with an explicit clock and checks invariants after each."""

    def __init__(self, engine: Engine | None = None, now: float = 1000.0) -> None:
        self.engine = engine if engine is not None else make_engine(now)
        self.now = now
        self.effects: list[Effect] = []

    def __call__(self, op: str, **args: object) -> Any:
        try:
            return self.engine.handle(op, args, self.now)
        finally:
            self.effects.extend(self.engine.take_effects())
            self.engine.check_invariants()

    def advance(self, seconds: float) -> list[Effect]:
        self.now += seconds
        effects = self.engine.tick(self.now)
        self.engine.check_invariants()
        self.effects.extend(effects)
        return effects

    def put(self, tube: str = "t", **args: object) -> str:
        result = self("put", tube=tube, **args)
        job_id: str = result["id"]
        return job_id

    def reserve(self, *tubes: str, **args: object) -> Any:
        return self("reserve", tubes=list(tubes or ["t"]), **args)

    def reserve_one(self, *tubes: str, **args: object) -> dict[str, Any]:
        result = self.reserve(*tubes, **args)
        assert not isinstance(result, Waiting), "expected a job, the reserve is waiting"
        assert len(result) == 1
        job: dict[str, Any] = result[0]
        return job
