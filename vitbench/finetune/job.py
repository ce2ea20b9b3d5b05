"""One fine-tune case, run inside a worker process: build with the dataset's classes, start from the pair's
shared initial weights, train, evaluate, and write TensorBoard events, weights, sample grids; return the row."""
from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..env import pkg_version
from ..measure import flops, memory
from ..measure.contention import cpu_times, steal_pct
from ..measure.timing import percentile
from ..providers import get_provider
from ..providers.torch_common import state_dict_to_numpy
from ..runner.artifacts import init_path, load_weights, safe_name, save_npz
from ..runner.worker import one_line
from ..suite import CaseBase, SideSpec
from . import data as D
from .loop import Step, evaluate, logits_of, make_optimizer, make_scheduler, train
from .plan import FinetuneCase

GRID = 32  # images per sample grid


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_classifier(side: SideSpec | CaseBase, img_size: int | None, num_classes: int,
                     seed: int) -> tuple[nn.Module, int]:
    """Build a suite side with ``num_classes`` outputs: through the constructor's ``num_classes`` argument, else
    ``reset_classifier(n)`` (timm's API). Seeded, so every worker builds the same initial weights."""
    seed_all(seed)
    provider = get_provider(side.provider)
    kwargs = dict(side.kwargs)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ValueError(f"kwargs.num_classes={kwargs['num_classes']} but the dataset has {num_classes} classes")
    try:
        model, img = provider.build(side.model, {**kwargs, "num_classes": num_classes}, img_size)
    except TypeError as e:
        if "num_classes" not in str(e):
            raise
        model, img = provider.build(side.model, kwargs, img_size)
        if not hasattr(model, "reset_classifier"):
            raise ValueError(f"{side.model}: takes no num_classes argument and has no reset_classifier(n); "
                             f"cannot give it {num_classes} outputs") from None
        model.reset_classifier(num_classes)
    if not img:
        raise ValueError(f"{side.model}: no input size known; set img_size in the suite's finetune section")
    return model, int(img)


def init_weights(case: FinetuneCase, run_dir: str) -> dict[str, Any]:
    """Job 'finetune_init': the pair's reference, freshly built, saved as the initial weights of every side."""
    ref = case.reference if case.role == "candidate" else case.side
    n = len(case.dataset["classes"])
    model, img = build_classifier(ref, case.img_size, n, case.seed)
    path = init_path(run_dir, case.pair, case.device)
    save_npz(path, state_dict_to_numpy(model))
    # the reference's preprocessing, for a Keras side (which carries none of timm's): the same inputs as the reference
    cfg = D.data_config(model, case.settings.mean, case.settings.std)
    path.with_suffix(".preprocessing.json").write_text(json.dumps(cfg))
    return {"img_size": img}


def _start_weights(case: FinetuneCase, model: nn.Module, run_dir: str) -> str:
    """Load the pair's initial weights (the reference's, ported). Returns what the ``init`` column says."""
    own = f"own (seed {case.seed})"
    if case.settings.init != "reference":
        return own
    if case.role == "candidate" and not case.port:
        return f"{own}; port: false in the suite"
    path = init_path(run_dir, case.pair, case.device)
    if not path.exists():
        return f"{own}; no reference weights (the init job failed, see logs/)"
    try:
        get_provider(case.provider).port(model, load_weights(path))
    except Exception as e:  # noqa: BLE001  (a failed port: trains from its own init, and says so)
        return f"{own}; port failed: {one_line(e)}"
    return "reference" if case.role == "candidate" else f"seed {case.seed}, shared with the candidates"


def step_columns(row: dict[str, Any], s: Any, history: list[Step], final: dict[str, Any]) -> list[float]:
    """A fine-tune row's step timing (the first ``timing_warmup_steps`` left out: allocations, caches, tracing),
    loss and final accuracy columns, added to ``row``; returns the timed steps' ms."""
    skip = min(s.timing_warmup_steps, len(history) - 1)
    timed = history[skip:]
    step_ms = [h.step_s * 1e3 for h in timed]
    row.update(
        samples_per_sec=s.batch_size * len(timed) / sum(h.step_s for h in timed),
        step_time_ms=float(np.mean(step_ms)), latency_ms_p50=percentile(step_ms, 50),
        latency_ms_p90=percentile(step_ms, 90), latency_ms_p99=percentile(step_ms, 99),
        latency_ms_mean=float(np.mean(step_ms)), latency_ms_min=min(step_ms),
        latency_ms_stdev=float(np.std(step_ms, ddof=1)) if len(step_ms) > 1 else 0.0,
        iters=len(timed), timed_s=sum(h.step_s for h in timed), timing_attempts=1,
        first_call_s=history[0].step_s, data_wait_ms=1e3 * float(np.mean([h.data_s for h in timed])),
        train_loss_first=history[0].loss, train_loss_last=float(np.mean([h.loss for h in history[-10:]])),
        val_loss=final["loss"], top1=final["topk"].get(1), top5=final["topk"].get(5),
        topk=" ".join(f"top{k}={v:.2f}" for k, v in final["topk"].items()),
    )
    return step_ms


def log_eval(writer: Any, curve: list[dict[str, Any]], step: int, res: dict[str, Any]) -> None:
    """An evaluation's loss and top-k, to TensorBoard and the curves."""
    writer.add_scalar("val/loss", res["loss"], step)
    curve.append({"step": step, "metric": "val_loss", "value": res["loss"]})
    for k, acc in res["topk"].items():
        writer.add_scalar(f"val/top{k}", acc, step)
        curve.append({"step": step, "metric": f"val_top{k}", "value": acc})


def weights_record(config: dict[str, Any], row: dict[str, Any], classes: list[str],
                   evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON written beside a fine-tuned model's weights: what it is, how it was trained, how it scored."""
    from .. import env as env_mod

    return {**config, "weights": row["weights_path"], "classes": classes,
            "metrics": {k: row.get(k) for k in ("top1", "top5", "topk", "val_loss", "samples_per_sec",
                                                 "train_loss_first", "train_loss_last", "gmacs", "train_gmacs")},
            "evals": [{"step": e["step"], "loss": e["loss"], **{f"top{k}": v for k, v in e["topk"].items()}}
                      for e in evals], "versions": env_mod.row_versions()}


def _autocast(precision: str, dev: torch.device) -> tuple[contextlib.AbstractContextManager | None, Any]:
    if precision == "fp32":
        return None, None
    dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
    scaler = torch.amp.GradScaler(dev.type) if precision == "amp" and dev.type == "cuda" else None
    return torch.autocast(device_type=dev.type, dtype=dtype), scaler


def _writer(log_dir: Path) -> Any:
    """torch's SummaryWriter, kept from importing TensorFlow: tensorboard imports it when it is installed (~0.7 GB
    of RSS and its own threads in a process that is timing a torch model). ``tensorboard.compat.notf`` is
    tensorboard's own switch to its TF-free stub, which writes the same event files."""
    import sys
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"TensorBoard event files need the 'tensorboard' package (pip install tensorboard): "
                          f"{e}") from None
    return SummaryWriter(log_dir=str(log_dir))


def finetune(case: FinetuneCase, run_dir: str) -> dict[str, Any]:
    """Job 'finetune': returns the row (plus 'curve' and 'latencies_ms', which the runner stores apart)."""
    from ..env import device_name, torch_device

    t_start = time.perf_counter()
    s = case.settings
    dev = torch_device(case.device)
    spec = D.DatasetSpec.from_dict(case.dataset)
    classes = list(spec.classes)
    model, img = build_classifier(case, case.img_size, len(classes), case.seed)
    init = _start_weights(case, model, run_dir)
    model.to(dev)
    cfg = D.data_config(model, s.mean, s.std)
    data = D.load_dataset(spec, s.val_fraction, img, cfg["crop_pct"], cfg["interpolation"])
    mean, std = cfg["mean"], cfg["std"]

    def to_input(x: torch.Tensor) -> torch.Tensor:
        return D.to_model_input(x, img, mean, std)

    out = Path(run_dir)
    name = f"{safe_name(case.label)[:80]}-{case.case_id}"
    row: dict[str, Any] = {  # the settings' columns come from the runner: they are in failed rows too
        "img_size": img, "device_name": device_name(dev), "threads": torch.get_num_threads(),
        "tf32": False, "torch_version": torch.__version__, "timm_version": pkg_version("timm"),
        "num_classes": len(classes), "train_samples": len(data.train), "val_samples": len(data.val), "init": init,
        "param_count_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }
    row["epochs"] = s.steps * s.batch_size / max(1, len(data.train))
    if len(data.train) < s.batch_size:
        raise ValueError(f"batch_size {s.batch_size} is larger than the training split ({len(data.train)} images)")

    # what the model sees, before any training: a labelled grid of denormalised inputs
    gx, gy = next(D.iter_batches(data.train, GRID, shuffle=True, seed=case.seed + 1))
    grid_in = D.save_sample_grid(D.denormalize(to_input(gx.to(dev)), mean, std), gy.tolist(), classes,
                                 out / "samples" / f"{name}-inputs.png",
                                 title=f"{case.label}: training inputs ({spec.label}, {img}px, denormalised)")

    tb_dir = out / "tensorboard" / name
    writer = _writer(tb_dir)
    config = {"case_id": case.case_id, "pair": case.pair, "label": case.label, "provider": case.provider,
              "model": case.model, "kwargs": case.kwargs, "img_size": img, "dataset": spec.to_dict(),
              "split": data.split, "preprocessing": cfg, "init": init, "settings": s}
    writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    autocast, scaler = _autocast(s.precision, dev)
    optimizer = make_optimizer(model, s.optimizer, s.lr, s.weight_decay, s.momentum)
    scheduler = make_scheduler(optimizer, s.steps, s.warmup_steps, s.schedule)
    ce = nn.CrossEntropyLoss()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    batches = D.iter_batches(data.train, s.batch_size, shuffle=True, seed=case.seed + 1,
                             num_workers=s.num_workers, drop_last=True)
    curve: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    window: list[Step] = []
    eval_s = 0.0

    def run_eval(step: int) -> dict[str, Any]:
        nonlocal eval_s
        t = time.perf_counter()
        res = evaluate(model, D.iter_batches(data.val, s.eval_batch_size, shuffle=False, epochs=1,
                                             num_workers=s.num_workers),
                       ks=sorted({1, *s.topk}), to_input=to_input, device=dev, autocast=autocast, loss_fn=ce)
        eval_s += time.perf_counter() - t
        log_eval(writer, curve, step, res)
        evals.append({"step": step, **res})
        return res

    def on_step(st: Step) -> None:
        writer.add_scalar("train/loss", st.loss, st.step)
        writer.add_scalar("train/lr", st.lr, st.step)
        curve.append({"step": st.step, "metric": "train_loss", "value": st.loss})
        curve.append({"step": st.step, "metric": "lr", "value": st.lr})
        window.append(st)
        if st.step % s.log_every == 0 or st.step == s.steps:
            sps = s.batch_size * len(window) / sum(w.step_s for w in window)
            writer.add_scalar("train/samples_per_sec", sps, st.step)
            curve.append({"step": st.step, "metric": "train_samples_per_sec", "value": sps})
            window.clear()
            print(f"step {st.step}/{s.steps} loss {st.loss:.4f} lr {st.lr:.3g} {sps:.1f} samples/s", flush=True)
        if st.step % s.eval_every == 0 and st.step != s.steps:
            res = run_eval(st.step)
            print(f"eval @ {st.step}: loss {res['loss']:.4f} " +
                  " ".join(f"top{k} {v:.2f}" for k, v in res["topk"].items()), flush=True)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    before = cpu_times()
    t_train = time.perf_counter()
    sampler = memory.RssSampler(0.01) if dev.type == "cpu" else contextlib.nullcontext()
    with sampler:
        history = train(model, batches, steps=s.steps, optimizer=optimizer, scheduler=scheduler,
                        loss_fn=loss_fn, to_input=to_input, device=dev, autocast=autocast, grad_clip=s.grad_clip,
                        scaler=scaler, on_step=on_step)
    train_s = time.perf_counter() - t_train - eval_s
    row["cpu_steal_pct"] = steal_pct(before, cpu_times())
    if dev.type == "cuda":
        row.update(cuda_peak_allocated_mb=torch.cuda.max_memory_allocated(dev) / 1e6,
                   cuda_peak_reserved_mb=torch.cuda.max_memory_reserved(dev) / 1e6,
                   nvml_used_mb=memory.nvml_used_mb(dev.index or 0))
    else:
        row["train_rss_delta_mb"] = sampler.peak_delta_mb
    final = run_eval(s.steps)
    writer.flush()
    writer.close()

    step_ms = step_columns(row, s, history, final)
    row.update(train_s=train_s, eval_s=eval_s)

    weights = out / "weights" / f"{name}.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    row["weights_path"] = str(weights.relative_to(out))
    vx, vy = next(D.iter_batches(data.val, GRID, shuffle=True, seed=case.seed + 2))  # a mix of classes
    model.eval()
    with torch.no_grad(), autocast or contextlib.nullcontext():
        vx = to_input(vx.to(dev))
        preds = logits_of(model(vx)).argmax(-1).cpu()
    D.save_sample_grid(D.denormalize(vx.float(), mean, std), vy.tolist(), classes,
                       out / "samples" / f"{name}-val-predictions.png", preds=preds.tolist(),
                       title=f"{case.label}: validation images after {s.steps} steps "
                             f"(top-1 {row['top1']:.1f}% on all {len(data.val)}; red = wrong)")

    # FLOPs last, on the trained model (they are not part of any timing and change no weight used above)
    x1 = to_input(gx[:2].to(dev))
    try:
        model.eval()
        macs, acts = flops.count_macs_acts(model, x1[:1])
        model.train()
        row.update(gmacs=macs / 1e9, macts_m=acts / 1e6, flops_method=f"{flops.METHOD}; train: {flops.TRAIN_METHOD}",
                   train_gmacs=flops.count_train_macs(
                       model, lambda: loss_fn(logits_of(model(x1)).float(), gy[:2].to(dev)), len(x1)) / 1e9)
    except Exception as e:  # noqa: BLE001  (a count that failed is said, not zero)
        row["flops_method"] = f"failed: {one_line(e)}"

    weights.with_suffix(".json").write_text(json.dumps(weights_record(config, row, classes, evals), indent=2,
                                                       default=str))
    row["sample_grid"] = str(grid_in.relative_to(out))
    row["events_dir"] = str(tb_dir.relative_to(out))
    row["peak_rss_mb"] = memory.peak_rss_mb()
    row["duration_s"] = time.perf_counter() - t_start
    row["curve"] = curve
    row["latencies_ms"] = step_ms
    return row
