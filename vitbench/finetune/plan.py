"""A suite's pairs as fine-tune cases: every side (reference first, then candidates) trained once with the suite's
``finetune:`` settings (built-in defaults when it has none), overridable from the command line."""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..suite import CaseBase, FinetuneSettings, SideSpec, Suite, merge_settings
from .data import DatasetSpec


@dataclass(frozen=True)
class FinetuneCase(CaseBase):
    """One side trained with the resolved ``finetune:`` settings on one dataset (``DatasetSpec.to_dict()``)."""

    img_size: int | None
    settings: FinetuneSettings
    dataset: dict[str, Any]
    task: str = "finetune"

    precision = property(lambda self: self.settings.precision)
    compile_mode = property(lambda self: "eager")
    batch_size = property(lambda self: self.settings.batch_size)
    seed = property(lambda self: self.settings.seed)

    @property
    def case_id(self) -> str:
        what = {k: v for k, v in self.settings.model_dump().items() if k not in ("timeout_s", "num_workers")}
        key = (f"finetune|{self.pair}|{self.role}|{self.index}|{self.provider}|{self.model}|{self.backend}|"
               f"{self.device}|{self.img_size}|{json.dumps(self.kwargs, sort_keys=True, default=str)}|"
               f"{self.dataset['kind']}:{self.dataset['name']}|{json.dumps(what, sort_keys=True)}")
        return hashlib.sha1(key.encode()).hexdigest()[:12]


def resolve_settings(suite: Suite, **overrides: Any) -> FinetuneSettings:
    """The suite's finetune section (or the defaults) with command-line overrides (None = keep)."""
    from pydantic import ValidationError

    from ..errors import InputError

    base = suite.finetune or FinetuneSettings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return FinetuneSettings.model_validate({**base.model_dump(), **changes})
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"finetune.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def expand(suite: Suite, settings: FinetuneSettings, dataset: DatasetSpec, device: str,
           only: str | None = None) -> list[FinetuneCase]:
    cases: list[FinetuneCase] = []
    for pair in suite.pairs:
        if only and not fnmatch.fnmatch(pair.name, only):
            continue
        ref = SideSpec.of(pair.reference)
        sides = [("reference", 0, pair.reference)] + [("candidate", j + 1, c) for j, c in enumerate(pair.candidates)]
        for role, index, side in sides:
            img = settings.img_size or merge_settings(suite.defaults, pair, side).get("img_size")
            cases.append(FinetuneCase(
                suite=suite.name, pair=pair.name, role=role, index=index, side=SideSpec.of(side), device=device,
                reference=ref if role == "candidate" else None, img_size=img, settings=settings,
                dataset=dataset.to_dict()))
    return cases


def describe(settings: FinetuneSettings, where: str) -> str:
    """What ``validate`` says of a suite's finetune section (its dataset resolved: a bad one is an error)."""
    from .data import resolve_dataset

    spec = resolve_dataset(settings.dataset, f"{where}: finetune.dataset")
    return (f"finetune: {settings.steps} steps x batch {settings.batch_size} per model on {spec.label} "
            f"({len(spec.classes)} classes)")


def write_plan(out_dir: Path, settings: FinetuneSettings, spec: DatasetSpec) -> None:
    """finetune.json: the settings and dataset a fine-tune run used."""
    (out_dir / "finetune.json").write_text(json.dumps({"settings": settings.model_dump(),
                                                       "dataset": spec.to_dict()}, indent=2))
