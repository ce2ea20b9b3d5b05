"""Suite files: schema (pydantic, unknown keys rejected), loading with errors that name file and field,
and expansion into cases (pairs x sides x batch sizes x precisions x compile modes)."""
from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SuiteError
from .modes import CompileMode, modes_for

Precision = Literal["fp32", "fp16", "bf16", "amp", "amp_bf16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrecisionTolerance(_Strict):
    """What a candidate timed at a lower precision must meet against the reference's fp32 output."""

    max_abs: float | None = Field(None, gt=0)
    max_rel: float | None = Field(None, gt=0, description="largest ||candidate - reference|| / ||reference||")
    min_cosine: float | None = Field(None, ge=-1, le=1)


class Tolerance(_Strict):
    """fp32 (the fields at the top), and per lower precision: ``fp16`` (also amp) and ``bf16`` (also amp_bf16),
    whose defaults allow about 5-10x the rounding error measured on timm's ViT-S, Swin-T and SAM ViT-B."""

    max_abs: float = Field(1e-4, gt=0, description="largest allowed |candidate - reference| on outputs")
    max_rel: float | None = Field(None, gt=0, description="largest ||candidate - reference|| / ||reference||")
    min_cosine: float | None = Field(None, ge=-1, le=1)
    fp16: PrecisionTolerance = Field(default_factory=lambda: PrecisionTolerance(max_rel=1e-2, min_cosine=0.999))
    bf16: PrecisionTolerance = Field(default_factory=lambda: PrecisionTolerance(max_rel=5e-2, min_cosine=0.99))

    def at(self, precision: str) -> PrecisionTolerance:
        """The limits a case timed at ``precision`` is held to."""
        if precision in ("fp16", "amp"):
            return self.fp16
        if precision in ("bf16", "amp_bf16"):
            return self.bf16
        return PrecisionTolerance(max_abs=self.max_abs, max_rel=self.max_rel, min_cosine=self.min_cosine)


class CompileOptions(_Strict):
    """torch.compile's keyword arguments; ``options``: Inductor config (e.g. ``{cpp_wrapper: true}``)."""

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool | None = None
    fullgraph: bool = False
    options: dict[str, bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _mode_or_options(self) -> CompileOptions:
        if self.mode is not None and self.options:
            raise ValueError("give mode or options, not both (torch.compile takes one of them)")
        return self


class Settings(_Strict):
    """Settings that suite defaults, a pair, or one side may set; the most specific wins."""

    img_size: int | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0, description="token input (B, tokens, dim) instead of an image")
    dim: int | None = Field(None, gt=0, description="channels of a token input")
    batch_sizes: list[int] | None = None
    precision: list[Precision] | None = None
    compile: list[CompileMode] | None = None
    compile_options: CompileOptions | None = None
    regions: str | None = Field(None, description="attribute holding the repeated blocks, e.g. 'blocks'")
    warmup_iters: int | None = Field(None, ge=0)
    min_iters: int | None = Field(None, ge=1)
    min_seconds: float | None = Field(None, ge=0)
    max_iters: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0, description="per job, from the moment its worker has started")
    max_memory_gb: float | None = Field(None, gt=0, description="a worker above this RSS is ended and its row is "
                                        "oom (default: 75% of physical memory)")
    rounds: int | None = Field(None, ge=1, le=1000, description="paired rounds: each side timed once per round, "
                               "in alternating order")
    processes: int | None = Field(None, ge=1, le=100, description="fresh timing processes the rounds are spread "
                                  "over; the speed ratio's interval is over processes (>= 2 for one)")
    sequential: bool | None = Field(None, description="stop a pair once its verdicts are settled, at planned looks "
                                    "(3, 6, 10 processes and the maximum); false: always the maximum")
    own_process: bool | None = Field(None, description="time this side in a timing process of its own (as a Keras "
                                     "side is against a torch one), not in the one its framework's sides share")
    control: bool | Literal["own_process"] | None = Field(
        None, description="time an A/A control beside the pair: a second instance of the reference (own_process: in "
        "a process of its own); a candidate's verdict must stand out from it")
    max_steal_pct: float | None = Field(None, ge=0, le=100, description="a block the VM lost more CPU in is "
                                        "contended (its round is re-run)")
    max_foreign_cpu_pct: float | None = Field(None, ge=0, le=100, description="a block in which other processes "
                                              "used more of the machine's CPU is contended (its round is re-run)")
    speed_threshold_pct: float | None = Field(None, ge=0, description="smallest speed difference called faster/"
                                              "slower; 'same' means the interval lies within it")
    timing_attempts: int | None = Field(None, ge=1, le=10)
    numerics_batch: int | None = Field(None, ge=1)
    perturb_std: float | None = Field(None, ge=0, description="add N(0, std) to the reference's weights: zero-"
                                      "initialised tables (rel-pos, pos-embed) then take part in the comparison")
    tolerance: Tolerance | None = None
    seed: int | None = None

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError("batch sizes must be a non-empty list of integers >= 1")
        return v

    @field_validator("precision", "compile", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


BUILTIN_DEFAULTS = Settings(
    batch_sizes=[1], precision=["fp32"], compile=["eager"], compile_options=CompileOptions(), warmup_iters=5,
    min_iters=10, min_seconds=40.0, max_iters=100_000, timeout_s=600, rounds=96, processes=16, sequential=True,
    own_process=False, control=False, max_steal_pct=5.0, max_foreign_cpu_pct=10.0, speed_threshold_pct=2.0,
    timing_attempts=3,
    numerics_batch=2, tolerance=Tolerance(), seed=0,
)


# settings of a pair's timing as a whole: its sides are timed together, in the same rounds and processes
GROUP_SETTINGS = ("rounds", "processes", "sequential", "max_steal_pct", "max_foreign_cpu_pct", "control")


class Side(Settings):
    """One implementation: who builds it (provider), which model, constructor kwargs, and overrides (not those
    of the pair's timing as a whole, ``GROUP_SETTINGS``)."""

    provider: str = Field(min_length=1, description="timm | vitbench | import | vitbench_keras | keras | keras_import "
                          "| keras_hub | vit_keras | vit_pytorch, or an installed plug-in's name")
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    backend: Literal["tensorflow", "jax", "torch"] | None = None
    port: bool = Field(True, description="load the reference's weights into this candidate before comparing")
    output: Literal["forward", "features"] = Field(
        "forward", description="what is compared and timed: forward() or forward_features()")

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        from .providers import known, unknown_provider

        if v not in known():
            raise ValueError(unknown_provider(v))
        return v

    @field_validator(*GROUP_SETTINGS)
    @classmethod
    def _not_per_side(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("a pair's sides are timed together, in the same rounds and processes: set this on the "
                             "pair or in defaults, not on one side")
        return v


class Pair(Settings):
    name: str = Field(min_length=1)
    reference: Side
    candidates: list[Side] = Field(default_factory=list)


class FinetuneSettings(_Strict):
    """The ``finetune:`` section: how ``vitbench finetune`` trains every torch side of the suite's pairs."""

    dataset: str = Field("animal-shape", min_length=1, description="built-in name or image-folder path")
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    img_size: int | None = Field(None, gt=0, description="default: the suite's img_size, else the model's own")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held out per class when a dataset has no val split")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(20, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "amp", "amp_bf16"] = "fp32"
    topk: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)
    eval_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    timing_warmup_steps: int = Field(5, ge=0, description="first steps left out of samples/s")
    num_workers: int = Field(0, ge=0, description="DataLoader workers for image folders")
    mean: list[float] | None = Field(None, min_length=3, max_length=3, description="default: the model's config")
    std: list[float] | None = Field(None, min_length=3, max_length=3)
    init: Literal["reference", "own"] = Field(
        "reference", description="candidates start from the reference's initial weights (ported), or their own")
    seed: int = 0
    timeout_s: float = Field(3600, gt=0)

    @field_validator("topk")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("top-k values must be integers >= 1")
        return sorted(set(v))


class Suite(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    defaults: Settings = Field(default_factory=Settings)
    finetune: FinetuneSettings | None = None
    pairs: list[Pair] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_pairs(self) -> Suite:
        seen: set[str] = set()
        for i, p in enumerate(self.pairs):
            if p.name in seen:
                raise ValueError(f"pairs.{i}.name: duplicate pair name '{p.name}'")
            seen.add(p.name)
        return self


def _loc(loc: tuple) -> str:
    return ".".join(str(x) for x in loc)


def load_suite(path: str | Path, check_models: bool = True) -> Suite:
    """Read, validate and (optionally) check that every model exists. Raises SuiteError naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(f"{path.name}:{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path.name}: a suite is a mapping with 'name' and 'pairs', got {type(data).__name__}")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        loc = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise SuiteError(f"{path.name}: {loc + ': ' if loc else ''}{msg}{more}") from None
    from .providers.import_provider import add_import_paths

    add_import_paths(path.resolve().parent, os.getcwd())
    if check_models:
        from .providers import check_side

        for i, pair in enumerate(suite.pairs):
            sides = [("reference", pair.reference)] + [(f"candidates.{j}", c) for j, c in enumerate(pair.candidates)]
            for where, side in sides:
                problem = check_side(side)
                if problem:
                    raise SuiteError(f"{path.name}: pairs.{i}.{where}.model: {problem}")
    return suite


@dataclass(frozen=True)
class SideSpec:
    """What builds one implementation (a suite side without its settings)."""

    provider: str
    model: str
    kwargs: dict[str, Any]
    label: str
    backend: str | None = None
    port: bool = True
    output: str = "forward"

    @property
    def framework(self) -> str:
        from .providers import framework_of

        return framework_of(self.provider)

    @classmethod
    def of(cls, side: Side) -> SideSpec:
        return cls(provider=side.provider, model=side.model, kwargs=dict(side.kwargs), label=side_label(side),
                   backend=side.backend, port=side.port, output=side.output)


@dataclass(frozen=True)
class CaseBase:
    """One side of one pair on one device; what inference and fine-tune cases share. ``reference``: the pair's
    reference side, whose weights a candidate is ported from (None for the reference itself)."""

    suite: str
    pair: str
    role: Literal["reference", "candidate", "control"]
    index: int  # 0 for the reference, 1.. for candidates, -1 for the A/A control
    side: SideSpec
    device: str
    reference: SideSpec | None

    # the side's identity, read everywhere
    provider = property(lambda self: self.side.provider)
    model = property(lambda self: self.side.model)
    kwargs = property(lambda self: self.side.kwargs)
    label = property(lambda self: self.side.label)
    backend = property(lambda self: self.side.backend)
    port = property(lambda self: self.side.port)
    output = property(lambda self: self.side.output)
    framework = property(lambda self: self.side.framework)


@dataclass(frozen=True)
class Case(CaseBase):
    """One measurement: one implementation at one batch size, precision and compile mode. ``settings`` are the
    suite's settings resolved for this side (built-in defaults < suite defaults < pair < side): every field set."""

    precision: str
    compile_mode: str
    batch_size: int
    settings: Settings

    @property
    def case_id(self) -> str:
        s = self.settings
        key = (f"{self.pair}|{self.role}|{self.index}|{self.provider}|{self.model}|{self.backend}|{self.device}|"
               f"{self.precision}|{self.compile_mode}|{self.batch_size}|{s.img_size}|{s.tokens}|{s.dim}")
        return hashlib.sha1(key.encode()).hexdigest()[:12]


def merge_settings(*layers: Settings) -> dict[str, Any]:
    """Layers of settings, least specific first: the last layer that sets a field wins."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k in Settings.model_fields:
            v = getattr(layer, k)
            if v is not None:
                out[k] = v
    return out


def side_label(side: Side) -> str:
    if side.label:
        return side.label
    if side.provider == "timm":
        return side.model
    suffix = f"-{side.backend}" if side.backend else ""
    return f"{side.provider}{suffix}/{side.model}"


def expand(
    suite: Suite,
    device: str,
    only: str | None = None,
    batch_sizes: list[int] | None = None,
) -> list[Case]:
    """All cases of a suite, references before their candidates, in file order."""
    cases: list[Case] = []
    for pair in suite.pairs:
        if only and not fnmatch.fnmatch(pair.name, only):
            continue
        sides = [("reference", 0, pair.reference)] + [("candidate", j + 1, c) for j, c in enumerate(pair.candidates)]
        ref = SideSpec.of(pair.reference)
        for role, index, side in sides:
            settings = Settings(**merge_settings(BUILTIN_DEFAULTS, suite.defaults, pair, side))
            if bool(settings.tokens) != bool(settings.dim):
                raise SuiteError(f"pair '{pair.name}': a token input needs both 'tokens' and 'dim'")
            spec = SideSpec.of(side)
            allowed = modes_for(spec.framework, spec.backend)
            modes = [m for m in settings.compile or () if m in allowed] or ["eager"]
            for precision in settings.precision or ():
                for mode in modes:
                    for bs in batch_sizes or settings.batch_sizes or ():
                        cases.append(Case(
                            suite=suite.name, pair=pair.name, role=role, index=index, side=spec, device=device,
                            reference=ref if role == "candidate" else None, precision=precision,
                            compile_mode=mode, batch_size=bs, settings=settings))
    return cases


def parse_batch_sizes(text: str | None) -> list[int] | None:
    """``--batch-sizes 1,32`` as a list; None when not given."""
    from .errors import InputError

    if not text:
        return None
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--batch-sizes '{text}': expected integers like 1,32") from None
    if not sizes or any(b < 1 for b in sizes):
        raise InputError(f"--batch-sizes '{text}': batch sizes must be >= 1")
    return sizes
