"""Scan timm benchmark tables for architecture families: which our suites cover, which are new since a previous
snapshot, and which are fastest for their size (throughput relative to a log-log fit on parameter count)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .report.results import load

_PREFIXES = {"tf", "legacy", "gluon", "ig", "ssl", "swsl", "dm", "hf", "timm", "test"}
_DIGIT_SUFFIX = re.compile(r"^([a-z]{3,}?)(\d{2,})[a-z]?$")  # resnet50d -> resnet, vgg16 -> vgg; swinv2 stays


TEST_FAMILY = "test models (ignored)"


def is_test_model(model: str) -> bool:
    """timm's tiny test models (test_vit, test_convnext2, ...): for unit tests, not an architecture family."""
    return model.split(".")[0].lower().startswith("test_")


def family_of(model: str) -> str:
    """Name rule: first name token, skipping framework prefixes (tf_, legacy_...) and depth numbers."""
    name = model.split(".")[0].lower()
    tokens = [t for t in name.split("_") if t]
    while len(tokens) > 1 and tokens[0] in _PREFIXES:
        tokens = tokens[1:]
    head = tokens[0] if tokens else name
    m = _DIGIT_SUFFIX.match(head)
    return m.group(1) if m else head


def architecture_of(model: str) -> str | None:
    """timm's source module for a model (its registry), where timm is installed and knows the name."""
    try:
        from timm.models import _registry
    except ImportError:
        return None
    return _registry._model_to_module.get(model.split(".")[0])


@dataclass
class ScanResult:
    models: pd.DataFrame  # per model: family, architecture, params, throughput, score, family status
    families: pd.DataFrame  # per family: status, n models, best model and its score


def suite_models(suites_dir: Path | None) -> set[str]:
    from .suite import load_suite

    names: set[str] = set()
    if suites_dir is None or not suites_dir.is_dir():
        return names
    for p in sorted(suites_dir.glob("*.yaml")):
        try:
            s = load_suite(p, check_models=False)
        except Exception:  # noqa: BLE001, S112  (a broken suite covers nothing; `validate` reports it)
            continue
        for pair in s.pairs:
            for side in [pair.reference, *pair.candidates]:
                names.add(side.model.split(":")[-1])
    return names


def _previous_models(path: str) -> set[str]:
    """Model names of a previous snapshot: a timm table, a cases.csv, or an earlier scan CSV."""
    try:
        return set(load(path).df["label"].astype(str))
    except InputError:
        df = pd.read_csv(path)
        if "model" not in df.columns or "family" not in df.columns:
            raise
        return set(df["model"].astype(str))


def scan(tables: list[str], previous: str | None = None, suites_dir: Path | None = None) -> ScanResult:
    frames = []
    for t in tables:
        df = load(t).df
        frames.append(df[["label", "samples_per_sec", "param_count_m", "img_size", "batch_size"]].assign(source=t))
    df = pd.concat(frames, ignore_index=True).dropna(subset=["samples_per_sec", "param_count_m"])
    df = df[(df.samples_per_sec > 0) & (df.param_count_m > 0)]
    if df.empty:
        raise InputError("scan: no rows with throughput and parameter count in the tables given")
    # one row per model: its fastest entry (the table's headline size)
    df = df.sort_values("samples_per_sec", ascending=False).drop_duplicates("label").rename(columns={"label": "model"})
    x, y = np.log(df.param_count_m.to_numpy()), np.log(df.samples_per_sec.to_numpy())
    slope, intercept = np.polyfit(x, y, 1) if len(df) > 1 else (0.0, float(y[0]))
    df["score"] = np.exp(y - (slope * x + intercept))  # 1.0 = as fast as the fit predicts for its size
    df["family"] = [TEST_FAMILY if is_test_model(m) else family_of(m) for m in df.model]
    df["architecture"] = df.model.map(architecture_of)
    covered = {family_of(m) for m in suite_models(suites_dir)}
    prev_models = _previous_models(previous) if previous else set()
    prev_families = {family_of(m) for m in prev_models} if previous else None

    df["test_model"] = df.model.map(is_test_model)

    def status(fam: str) -> str:
        """Two facts: new since --previous (or not), covered by our suites (or not)."""
        if fam == TEST_FAMILY:
            return TEST_FAMILY
        new = prev_families is not None and fam not in prev_families
        cov = fam in covered
        return "new, covered" if new and cov else "new" if new else "covered" if cov else "uncovered"

    df["status"] = df.family.map(status)
    df["new_model"] = ~df.model.isin(prev_models) if previous else False
    fams = []
    for fam, g in df.groupby("family"):
        best = g.sort_values("score", ascending=False).iloc[0]
        fams.append({"family": fam, "status": best.status, "architecture": best.architecture or "",
                     "models": len(g), "best_model": best.model, "param_count_m": best.param_count_m,
                     "samples_per_sec": best.samples_per_sec, "score": best.score,
                     "examples": ", ".join(g.model.head(3))})
    order = {"new": 0, "new, covered": 1, "uncovered": 2, "covered": 3, TEST_FAMILY: 4}
    families = pd.DataFrame(fams)
    families = families.assign(_o=families.status.map(order)).sort_values(["_o", "score"], ascending=[True, False])
    families = families.drop(columns="_o").reset_index(drop=True)
    df = df.drop(columns="test_model")
    models = df[["model", "family", "architecture", "status", "new_model", "param_count_m", "samples_per_sec",
                 "img_size", "batch_size", "score", "source"]].reset_index(drop=True)
    return ScanResult(models, families)


def emit_suite(result: ScanResult, path: Path, top: int, max_params: float | None = None) -> int:
    """Write a suite with timm references for the top new families our suites do not cover yet (else the top
    uncovered ones): of each family its smallest model (one that runs anywhere), or with ``max_params`` its
    largest up to that size. Returns the pair count."""
    import yaml

    pick = result.families[result.families.status == "new"].head(top)
    if pick.empty:
        pick = result.families[result.families.status == "uncovered"].head(top)
    names = []
    for fam in pick.family:
        g = result.models[result.models.family == fam].sort_values("param_count_m")
        if max_params is not None:
            fits = g[g.param_count_m <= max_params]
            if fits.empty:
                continue
            names.append(str(fits.iloc[-1].model))
        else:
            names.append(str(g.iloc[0].model))
    pairs = [{"name": n, "reference": {"provider": "timm", "model": n}} for n in names]
    if not pairs:
        raise InputError("scan --emit-suite: no new or uncovered family to put in a suite"
                         + (f" with a model of at most {max_params:g} M params" if max_params is not None else ""))
    doc = {"name": Path(path).stem, "description": "emitted by vitbench scan: timm references for new families",
           "defaults": {"batch_sizes": [1], "precision": "fp32", "compile": ["eager"]}, "pairs": pairs}
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
    return len(pairs)



def scan_to_files(tables: list[str], previous: str | None, suites: Path | None, csv_out: Path,
                  emit: Path | None, top: int, max_params: float | None) -> tuple[ScanResult, int]:
    """``vitbench scan``: scan, write the scan CSV, and (``emit``) a suite, checked by loading it back. Coverage
    comes from ``suites``, else ./suites, else the embedded suites."""
    from .runner.run_dir import embedded_suites_dir
    from .suite import load_suite

    suites_path = suites or (Path("suites") if Path("suites").is_dir() else embedded_suites_dir())
    res = scan(tables, previous, suites_path)
    try:
        csv_out.parent.mkdir(parents=True, exist_ok=True)
        res.models.to_csv(csv_out, index=False)
    except OSError as e:
        raise InputError(f"--csv {csv_out}: cannot write there ({e.strerror or type(e).__name__})") from None
    n = 0
    if emit:
        n = emit_suite(res, emit, top, max_params)
        load_suite(emit)
    return res, n
