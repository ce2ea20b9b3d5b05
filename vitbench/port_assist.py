"""``vitbench port``: how a reference's weights would reach each candidate of a suite, as a table, and the port
function that makes it so. The reference and each candidate are built in workers of their own framework (as
``run`` builds them): the reference writes its artifacts, the candidate's worker aligns its tensors with them
(``vitbench.align``) and writes the function."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PortReport:
    pair: str
    label: str
    framework: str
    outcome: dict[str, Any]  # the worker's answer (see ``align_job``), or {"error": ...}

    @property
    def complete(self) -> bool:
        return bool(self.outcome.get("complete"))


def align_job(case: Any, run_dir: str) -> dict[str, Any]:
    """Worker job: build the candidate, read the reference's tensors from the artifacts, align them. What its
    port would do today (its hook, the names as they are) is said too."""
    from .align import align, function_source, keras_tensors, reference_tensors, torch_tensors
    from .providers import get_provider
    from .providers.import_provider import port_function
    from .runner.artifacts import artifact_path, load_weights

    state = load_weights(artifact_path(run_dir, case.pair, case.device))
    if case.framework == "torch":
        from .runner.torch_worker import build, setup_device

        model, _ = build(case, setup_device(case))
        tensors, hook_name = torch_tensors(model), "checkpoint_filter_fn"
    else:
        from .runner.keras_worker import prepare

        prepare(case)
        model, _ = get_provider(case.provider).build(case.model, dict(case.kwargs), case.settings.img_size)
        tensors, hook_name = keras_tensors(model), "port_weights"
    a = align(reference_tensors(state), tensors, case.framework)
    names_fit = {t.name for t in tensors} == set(state)
    return {"complete": a.complete, "summary": a.summary(), "hook": port_function(model, hook_name) is not None,
            "names_fit": names_fit, "matches": [m.__dict__ for m in a.matches], "missing": a.missing,
            "unexpected": a.unexpected, "ambiguous": a.ambiguous,
            "source": function_source(a, case.framework, case.reference.label, case.label) if a.complete else ""}


def port_reports(suite: Any, only: str | None, on_start: Any = None) -> list[PortReport]:
    """One report per candidate that ports (``port: true``) of the suite's pairs (``only``: a glob on pair names),
    at its first setting."""
    from .runner.session import run_job
    from .suite import expand

    seen: set[tuple[str, int]] = set()
    reports = []
    with tempfile.TemporaryDirectory(prefix="vitbench-port-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "logs").mkdir()
        for case in expand(suite, "cpu", only=only):
            if case.role != "candidate" or not case.port or (case.pair, case.index) in seen:
                continue
            seen.add((case.pair, case.index))
            if on_start:
                on_start(case)
            log = run_dir / "logs" / f"{case.case_id}.log"
            ref = run_job(case, run_dir, "reference", case.settings.timeout_s, log)
            out = run_job(case, run_dir, "vitbench.port_assist:align_job", case.settings.timeout_s, log) \
                if ref.status == "ok" else ref
            outcome = out.result if out.status == "ok" else {"error": f"{out.status}: {out.error}"}
            if ref.status != "ok":
                outcome = {"error": f"the reference could not be built: {ref.status}: {ref.error}"}
            reports.append(PortReport(case.pair, case.label, case.framework, outcome))
    return reports
