"""One Keras fine-tune case, run inside a Keras worker (its backend fixed before Keras is imported): the pair's
initial weights ported in (as ``run`` ports them), the torch sides' batches in the same order and with the same
preprocessing (the reference's), ``model.compile`` with AdamW or SGD, the same warm-up + cosine schedule, label
smoothing and global gradient clipping as the torch sides, then ``train_on_batch`` step by step (timed), evaluation
on the whole validation split, and the outputs of a torch row: curves, TensorBoard events, ``.weights.h5`` with its
JSON, sample grids, training MACs. The data pipeline is torch's (imported here for the data only: no torch model
runs in this process), so both frameworks see the very same uint8 batches."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..measure import memory
from ..measure.contention import cpu_times, steal_pct
from ..providers import get_provider
from ..runner.artifacts import init_path, safe_name
from . import data as D
from .plan import FinetuneCase

GRID = 32
NO_DECAY = ("pos_embed", "cls_token", "reg_token", "dist_token", "relative_position_bias_table")


def preprocessing_path(run_dir: str, case: FinetuneCase) -> Path:
    """Where the init job writes the reference's preprocessing (mean/std, crop, interpolation) beside its weights."""
    return init_path(run_dir, case.pair, case.device).with_suffix(".preprocessing.json")


def build_classifier(case: FinetuneCase, num_classes: int) -> tuple[Any, int]:
    import keras

    keras.utils.set_random_seed(case.seed)
    kwargs = dict(case.kwargs)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ValueError(f"kwargs.num_classes={kwargs['num_classes']} but the dataset has {num_classes} classes")
    model, img = get_provider(case.provider).build(case.model, {**kwargs, "num_classes": num_classes}, case.img_size)
    if not img:
        raise ValueError(f"{case.model}: no input size known; set img_size in the suite's finetune section")
    return model, int(img)


def _no_decay(model: Any) -> list[Any]:
    """Variables without weight decay, as the torch sides' optimizer groups them: biases and norm scales (ndim <= 1)
    and position/class tokens and relative-position tables (timm's ``no_weight_decay()`` names)."""
    return [v for v in model.trainable_variables
            if len(v.shape) <= 1 or any(n in v.path for n in NO_DECAY)]


def _torch_adamw() -> Any:
    """Keras' AdamW with torch's update: epsilon added to the bias-corrected sqrt(v) (Keras adds it before the
    correction, so its epsilon acts ~30x larger at step 1; that alone moves a run's loss by ~1e-3 by step 20). The
    decoupled weight decay (w -= lr * wd * w, before the update) is the same in both."""
    import keras
    from keras import ops

    class TorchAdamW(keras.optimizers.AdamW):
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            lr = ops.cast(learning_rate, variable.dtype)
            gradient = ops.cast(gradient, variable.dtype)
            step = ops.cast(self.iterations + 1, variable.dtype)
            bc1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step)
            bc2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step)
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
            denom = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bc2)), self.epsilon)
            self.assign_sub(variable, ops.divide(ops.multiply(m, lr / bc1), denom))

    return TorchAdamW


def _optimizer(model: Any, s: Any) -> tuple[Any, list[str]]:
    """Keras' AdamW / SGD with the torch sides' settings; returns it with what could not be matched."""
    import keras

    differs: list[str] = []
    clip = {"global_clipnorm": s.grad_clip} if s.grad_clip else {}
    if s.optimizer == "adamw":
        # torch's AdamW: eps 1e-8 (Keras' default is 1e-7), decay lr * wd * w on the decayed groups
        opt = _torch_adamw()(learning_rate=s.lr, weight_decay=s.weight_decay, beta_1=0.9, beta_2=0.999,
                             epsilon=1e-8, **clip)
        opt.exclude_from_weight_decay(var_list=_no_decay(model))
    elif s.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=s.lr, momentum=s.momentum, nesterov=s.momentum > 0,
                                   weight_decay=s.weight_decay or None, **clip)
        opt.exclude_from_weight_decay(var_list=_no_decay(model))
        differs.append("sgd: Keras adds weight decay as a decoupled step, torch's SGD adds it to the gradient")
    else:
        raise ValueError(f"unknown optimizer '{s.optimizer}' (adamw, sgd)")
    return opt, differs


def _nhwc(x: Any, img: int, mean: Any, std: Any) -> np.ndarray:
    """uint8 NCHW (torch batches) -> the reference's normalised input, channels last for Keras."""
    return D.to_model_input(x, img, mean, std).permute(0, 2, 3, 1).contiguous().numpy()


def _evaluate(model: Any, val: Any, s: Any, img: int, mean: Any, std: Any, ks: list[int]) -> dict[str, Any]:
    logits, targets = [], []
    for x, y in D.iter_batches(val, s.eval_batch_size, shuffle=False, epochs=1, num_workers=s.num_workers):
        logits.append(np.asarray(model.predict_on_batch(_nhwc(x, img, mean, std)), dtype=np.float64))
        targets.append(y.numpy())
    z, t = np.concatenate(logits), np.concatenate(targets)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    order = np.argsort(-z, axis=1, kind="stable")
    topk = {k: 100.0 * float((order[:, :k] == t[:, None]).any(axis=1).mean()) for k in ks if k <= z.shape[1]}
    return {"loss": float(-logp[np.arange(len(t)), t].mean()), "n": len(t), "topk": topk}


def finetune(case: FinetuneCase, run_dir: str) -> dict[str, Any]:
    """Job 'finetune' for a Keras side: returns the row (plus 'curve' and 'latencies_ms')."""
    from ..env import cpu_name, pkg_version
    from ..runner.keras_worker import prepare

    t_start = time.perf_counter()
    backend = prepare(case)
    import keras

    from .job import _start_weights, _writer, log_eval, step_columns, weights_record
    from .loop import Step, lr_factor

    if case.device != "cpu":
        raise ValueError("Keras fine-tuning runs on cpu here")
    if case.settings.precision != "fp32":
        raise ValueError(f"precision {case.settings.precision}: Keras fine-tuning runs fp32 only")
    s = case.settings
    spec = D.DatasetSpec.from_dict(case.dataset)
    classes = list(spec.classes)
    model, img = build_classifier(case, len(classes))
    init = _start_weights(case, model, run_dir)
    pre = preprocessing_path(run_dir, case)
    cfg = json.loads(pre.read_text()) if pre.exists() else D.data_config(model, s.mean, s.std)
    cfg["source"] = f"the pair's reference ({cfg.get('source')})" if pre.exists() else cfg["source"]
    data = D.load_dataset(spec, s.val_fraction, img, cfg["crop_pct"], cfg["interpolation"])
    mean, std = cfg["mean"], cfg["std"]
    if len(data.train) < s.batch_size:
        raise ValueError(f"batch_size {s.batch_size} is larger than the training split ({len(data.train)} images)")
    out = Path(run_dir)
    name = f"{safe_name(case.label)[:80]}-{case.case_id}"
    n_params = sum(int(np.prod(v.shape)) for v in model.weights)
    row: dict[str, Any] = {
        "img_size": img, "device_name": cpu_name(), "tf32": False, "keras_version": keras.__version__,
        "tf_version": pkg_version("tensorflow"), "num_classes": len(classes), "train_samples": len(data.train),
        "val_samples": len(data.val), "init": init, "param_count_m": n_params / 1e6,
        "trainable_params_m": sum(int(np.prod(v.shape)) for v in model.trainable_weights) / 1e6,
        "epochs": s.steps * s.batch_size / max(1, len(data.train)),
    }
    gx, gy = next(D.iter_batches(data.train, GRID, shuffle=True, seed=case.seed + 1))
    grid_in = D.save_sample_grid(D.denormalize(D.to_model_input(gx, img, mean, std), mean, std), gy.tolist(),
                                 classes, out / "samples" / f"{name}-inputs.png",
                                 title=f"{case.label}: training inputs ({spec.label}, {img}px, denormalised)")
    tb_dir = out / "tensorboard" / name
    writer = _writer(tb_dir)
    config = {"case_id": case.case_id, "pair": case.pair, "label": case.label, "provider": case.provider,
              "model": case.model, "kwargs": case.kwargs, "backend": backend, "img_size": img,
              "dataset": spec.to_dict(), "split": data.split, "preprocessing": cfg, "init": init,
              "settings": s.model_dump()}
    writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    optimizer, differs = _optimizer(model, s)
    ks = sorted({1, *s.topk})
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=s.label_smoothing))
    batches = D.iter_batches(data.train, s.batch_size, shuffle=True, seed=case.seed + 1,
                             num_workers=s.num_workers, drop_last=True)
    curve: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    steps: list[Any] = []  # loop.Step each
    eval_s, window = 0.0, []

    def run_eval(step: int) -> dict[str, Any]:
        nonlocal eval_s
        t = time.perf_counter()
        res = _evaluate(model, data.val, s, img, mean, std, ks)
        eval_s += time.perf_counter() - t
        log_eval(writer, curve, step, res)
        evals.append({"step": step, **res})
        return res

    before = cpu_times()
    with memory.RssSampler(0.01) as sampler:
        for i in range(s.steps):
            t0 = time.perf_counter()
            x, y = next(batches)
            xb = _nhwc(x, img, mean, std)
            yb = np.eye(len(classes), dtype="float32")[y.numpy()]
            lr = s.lr * lr_factor(i, s.steps, s.warmup_steps, s.schedule)
            optimizer.learning_rate = lr
            t1 = time.perf_counter()
            loss = float(np.asarray(model.train_on_batch(xb, yb)))
            step_s = time.perf_counter() - t1
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {i + 1} (lr {lr:.3g}): training diverged")
            steps.append(Step(i + 1, loss, lr, t1 - t0, step_s))
            writer.add_scalar("train/loss", loss, i + 1)
            writer.add_scalar("train/lr", lr, i + 1)
            curve += [{"step": i + 1, "metric": "train_loss", "value": loss},
                      {"step": i + 1, "metric": "lr", "value": lr}]
            window.append(step_s)
            if (i + 1) % s.log_every == 0 or i + 1 == s.steps:
                sps = s.batch_size * len(window) / sum(window)
                writer.add_scalar("train/samples_per_sec", sps, i + 1)
                curve.append({"step": i + 1, "metric": "train_samples_per_sec", "value": sps})
                window = []
                print(f"step {i + 1}/{s.steps} loss {loss:.4f} lr {lr:.3g} {sps:.1f} samples/s", flush=True)
            if (i + 1) % s.eval_every == 0 and i + 1 != s.steps:
                run_eval(i + 1)
    train_s = sum(st.step_s for st in steps)
    row["cpu_steal_pct"] = steal_pct(before, cpu_times())
    row["train_rss_delta_mb"] = sampler.peak_delta_mb
    final = run_eval(s.steps)
    writer.flush()
    writer.close()

    step_ms = step_columns(row, s, steps, final)  # the first steps (tracing, allocations) left out
    row.update(train_s=train_s, eval_s=eval_s, finetune_differences="; ".join(differs) or None)

    weights = out / "weights" / f"{name}.weights.h5"
    weights.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(weights))
    row["weights_path"] = str(weights.relative_to(out))
    vx, vy = next(D.iter_batches(data.val, GRID, shuffle=True, seed=case.seed + 2))
    preds = np.asarray(model.predict_on_batch(_nhwc(vx, img, mean, std))).argmax(-1)
    D.save_sample_grid(D.denormalize(D.to_model_input(vx, img, mean, std), mean, std), vy.tolist(), classes,
                       out / "samples" / f"{name}-val-predictions.png", preds=preds.tolist(),
                       title=f"{case.label}: validation images after {s.steps} steps "
                             f"(top-1 {row['top1']:.1f}% on all {len(data.val)}; red = wrong)")
    counted = get_provider(case.provider).count_macs(model, None)
    if counted is None:
        row["flops_method"] = f"not counted for {type(model).__name__}"
    else:
        row.update(gmacs=counted[0] / 1e9, macts_m=counted[1] / 1e6, train_gmacs=3 * counted[0] / 1e9,
                   flops_method=f"{counted[2]}; train: 3x the forward (backward ~2x)")
    record = {**weights_record(config, row, classes, evals),
              "load": "build the model as in 'provider'/'model'/'kwargs' with num_classes, then "
                      "model.load_weights(<weights>)"}
    Path(str(weights).removesuffix(".weights.h5") + ".json").write_text(json.dumps(record, indent=2, default=str))
    row["sample_grid"] = str(grid_in.relative_to(out))
    row["events_dir"] = str(tb_dir.relative_to(out))
    row["peak_rss_mb"] = memory.peak_rss_mb()
    row["duration_s"] = time.perf_counter() - t_start
    row["curve"] = curve
    row["latencies_ms"] = step_ms
    return row
