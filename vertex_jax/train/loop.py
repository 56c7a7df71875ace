"""The training run: restore, epochs of sharded steps, validation, checkpoints, early stop.

Restore order: the workdir's own checkpoint → ``config.resume`` → ``config.init_from``
(parameters only) → scratch. SIGTERM/SIGINT finish the current step (with several
processes, signalled all or some: the step after the next multiple of ``log_every_steps``,
agreed by all without stalling the devices, :mod:`vertex_jax.train.stop`), save and return;
a non-finite loss stops the run (or skips the step with ``nan_policy="skip"``) and
leaves the last good checkpoint as it was. A finished run fits ``config.calibration`` on
its best checkpoint's validation outputs and stores it in that step's card.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

import vertex_jax
from vertex_jax import mesh as meshlib
from vertex_jax import runs
from vertex_jax.auto_setting import auto_enabled
from vertex_jax.model_card import write_run_card
from vertex_jax.calibrate.run import calibrate_outputs
from vertex_jax.calibrate.run import store as store_calibration
from vertex_jax.data.prepare import PreparedData, describe_training_data, prepare
from vertex_jax.models.build import tasks_of
from vertex_jax.models.weights import load_pretrained
from vertex_jax.train.checkpoint import Checkpoints
from vertex_jax.train.dispatch import StepDispatch
from vertex_jax.train.metrics import MetricWriter, Throughput, auroc_per_task
from vertex_jax.train.moments import MomentLayout
from vertex_jax.train.packing import StatePacking, pack_state_enabled
from vertex_jax.train.prefetch import DevicePrefetch
from vertex_jax.train.state import TrainState, flatten_enabled, initialise, model_and_optimizer
from vertex_jax.train.step import make_eval_step, make_train_step
from vertex_jax.train.stop import Preemption, StopAgreement
from vertex_jax.train.vertebra_data import training_tables
from vertex_jax.errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """The loss or gradient became NaN/Inf; names the step and the examples of the batch."""


@dataclasses.dataclass
class Progress:
    """What, beyond the arrays, a resumed run needs to continue exactly."""

    step: int = 0
    best_auroc: float = -1.0
    best_step: int = -1
    epochs_without_improvement: int = 0
    history: list = dataclasses.field(default_factory=list)


def evaluate(state, eval_step, dataset, mesh, tasks: tuple[str, ...]) -> dict[str, Any]:
    """Run a whole evaluation split; returns gathered per-example outputs and AUROC per task."""
    parts = []
    for batch in dataset:
        parts.append(meshlib.gather(eval_step(state, meshlib.to_global(batch, mesh))))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = out["valid"].astype(bool)
    out = {k: v[keep] for k, v in out.items()}
    order = np.argsort(out["index"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    out["auroc"] = auroc_per_task(out["labels"], out["probs"], out["label_mask"], tasks)
    return out


def _initial_state(config: Any, steps_per_epoch: int) -> TrainState:
    """A fresh model (with ``model.init_weights`` in its backbone, then ``init_from``'s
    parameters over it) and its optimizer, initialised by one program (:func:`initialise`)."""
    graphdef, state = initialise(lambda: model_and_optimizer(config, steps_per_epoch, config.seed))
    if not (config.model.init_weights or config.init_from):
        return TrainState(graphdef, state)
    model, optimizer = nnx.merge(graphdef, state)
    if config.model.init_weights:
        load_pretrained(model.backbone, config.model.init_weights)
    if config.init_from:
        report = runs.load_params(config.init_from, model)
        logging.warning("init_from %s: loaded %d parameter arrays", config.init_from, len(report["loaded"]))
        for kind in ("missing", "unexpected", "mismatched"):
            if report[kind]:
                logging.warning("init_from: %d %s (left as initialised): %s", len(report[kind]), kind,
                                ", ".join(report[kind][:20]))
    return TrainState(*nnx.split((model, optimizer)))


def model_card(config: Any, data: PreparedData) -> dict[str, Any]:
    """Tasks, input statistics, preprocessing and training data of the run, saved with every
    checkpoint (``model_card.md`` renders it: :mod:`vertex_jax.model_card`)."""
    return {"tasks": list(data.tasks), "domain": config.data.domain,
            "clinical_stats": data.stats.to_dict(), "preprocess": data.cache.config.to_dict(),
            "variant": config.model.variant, "use_clinical": config.model.use_clinical,
            "head": config.model.head, "vertebrae": bool(config.model.vertebrae),
            "training_data": describe_training_data(config.data, data),
            "vertex_jax": vertex_jax.__version__}


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Train per ``config`` in ``workdir``; returns the run summary (also written as JSON)."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    leader = jax.process_index() == 0
    tasks = tasks_of(config)
    mesh = meshlib.make_mesh()
    meshlib.check_batch(config.batch_size, mesh)
    meshlib.check_batch(config.eval_batch_size, mesh)
    if leader:
        runs.config_path(workdir).write_text(config.to_json_best_effort(indent=2))
    data = prepare(config.data, workdir, tasks=tasks, is_leader=leader or not config.data.shared_fs,
                   barrier=meshlib.barrier if config.data.shared_fs else (lambda name: None))
    train_rows = len(data.split(config.data.train_split))
    steps_per_epoch = max(1, train_rows // config.batch_size)
    total_steps = config.num_epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
    vertebra_slots, vertebra_line = training_tables(config, data)
    if leader and vertebra_line:
        print(vertebra_line, flush=True)
    train_iter = iter(data.train(global_batch=config.batch_size, seed=config.seed,
                                 split=config.data.train_split, workers=config.data.workers,
                                 extra=vertebra_slots, **proc))

    ts = _initial_state(config, steps_per_epoch)
    ckpt = Checkpoints(runs.checkpoints_dir(workdir), keep_latest=config.checkpoint.keep_latest,
                       keep_best=config.checkpoint.keep_best)
    progress = Progress()
    # Global, replicated arrays (also across processes); restores land in the same sharding.
    state = jax.jit(lambda s: s, out_shardings=meshlib.replicated(mesh))(ts.state)
    # Checkpoints keep the optimizer's moments per parameter, whatever optim.flatten is.
    layout = MomentLayout.of(config, steps_per_epoch, meshlib.replicated(mesh)) if flatten_enabled(config) else None
    saved_form = layout.to_saved if layout else (lambda s: s)
    trained_form = layout.from_saved if layout else (lambda s: s)
    # What a restore reads into: shapes and shardings only (no copy of the state kept alive).
    restore_target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                  jax.eval_shape(layout.to_saved, state) if layout else state)
    source = ckpt.directory
    restored = ckpt.restore_latest(restore_target, train_iter)
    if restored is None and config.resume:
        source = config.resume
        restored = Checkpoints(config.resume).restore_latest(restore_target, train_iter)
    if restored is not None:
        step, state, saved = restored
        state = trained_form(state)
        progress = Progress(**saved)
        if leader:
            print(f"resumed from {source} at step {step} (best {runs.METRIC} {progress.best_auroc:.4f})",
                  flush=True)
    # The step takes the state packed (one buffer per dtype) when config.pack_state: less host
    # time per dispatch. Validation and checkpoints see the unpacked tree (``state``).
    packing = StatePacking(state) if pack_state_enabled(config) else None
    train_step = meshlib.compiled_together(make_train_step(ts.graphdef, config, mesh, packing), "train step")
    replicated = meshlib.replicated(mesh)
    pack = jax.jit(packing.pack, out_shardings=replicated) if packing else (lambda s: s)
    unpack = jax.jit(packing.unpack, out_shardings=replicated) if packing else (lambda s: s)
    eval_step = meshlib.compiled_together(make_eval_step(ts.graphdef, mesh), "eval step")
    writer = MetricWriter(workdir, enabled=leader)
    card = model_card(config, data)
    if leader:
        runs.card_path(workdir).write_text(json.dumps(card, indent=2))
        write_run_card(workdir)

    def save(metrics: dict[str, float] | None = None) -> None:
        ckpt.save(progress.step, saved_form(state), train_iter, dataclasses.asdict(progress),
                  json.loads(config.to_json_best_effort()), card, metrics)

    def validate(s) -> dict[str, Any]:
        """The validation split's outputs and AUROC under state ``s``."""
        return evaluate(s, eval_step, data.evaluate(config.data.val_split, global_batch=config.eval_batch_size,
                                                    **proc), mesh, tasks)

    def log(step: int, metrics: dict[str, Any]) -> None:
        """Step ``step``'s scalars to the metric files and the progress bar."""
        loss, rate = float(metrics["loss"]), clock.images_per_s
        scalars = {"train/loss": loss, "train/grad_norm": float(metrics["grad_norm"])}
        scalars.update({f"train/{k}": float(v) for k, v in metrics.items() if k.startswith(("image_", "vertebra_"))})
        if rate is not None:  # none yet when the first steps of the run are all logged
            scalars["train/images_per_s"] = rate
        bar.set_postfix(loss=f"{loss:.4f}", img_s="-" if rate is None else f"{rate:.1f}")
        writer.write(step, scalars)

    def finished(pending: tuple | None) -> None:
        """The step ``pending`` is done: count its time on the clock, log its metrics on a
        logging step, and stop on a non-finite loss (unless ``nan_policy="skip"``, handled in
        the step itself), naming the step and its batch; nothing has been saved since.

        Called once the next step is queued, so reading this step's metrics never leaves the
        devices idle (reading the step just dispatched would wait for it, then for the host)."""
        if pending is None:
            return
        step, epoch, rows, future = pending
        metrics = future.result()
        if config.nan_policy == "skip" or bool(metrics["finite"]):
            clock.tick(config.batch_size)
            if step % config.log_every_steps == 0:
                log(step, metrics)
            return
        raise NonFiniteLossError(
            f"non-finite loss {float(metrics['loss'])} at step {step} (epoch {epoch}); batch rows "
            f"{rows.tolist()} of split '{config.data.train_split}'. The last good checkpoint in "
            f"{ckpt.directory} is untouched.")

    feed = DevicePrefetch(train_iter, lambda b: meshlib.to_global(b, mesh), depth=2)
    pending = None  # (step, epoch, batch rows, future of its metrics) of the step whose flag is unread
    # the step's calls inline or from a thread of their own (vertex_jax.train.dispatch)
    dispatch = StepDispatch(train_step, threaded=auto_enabled(config.dispatch_thread, "dispatch_thread"))
    preemption = Preemption()  # restored in the finally below: nothing may raise in between
    stop = StopAgreement(preemption, mesh, every=config.log_every_steps, launch=dispatch.call)
    clock = Throughput()  # images/s of the steps alone (summary["throughput"])
    stopped = "completed"
    best_outputs = None  # the best checkpoint's validation outputs, for its calibration
    try:
        while progress.step < total_steps:
            epoch = progress.step // steps_per_epoch
            epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
            bar = tqdm(total=epoch_end - epoch * steps_per_epoch, initial=progress.step - epoch * steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step", disable=not leader,
                       dynamic_ncols=True)
            preempted = False
            clock.pause()
            dispatch.start(pack(state))
            while progress.step < epoch_end:
                t0 = time.perf_counter()
                host_batch, batch = feed.next(epoch_end - progress.step)
                t1 = time.perf_counter()
                metrics = dispatch.submit(batch)
                clock.waited(t1 - t0)
                clock.dispatched(time.perf_counter() - t1)
                # The previous step's flag: reading it waits for that step only, while this one
                # is already queued behind it, so the devices never idle on the host. (The
                # epoch's first step has none: the clock's first tick only starts it.)
                finished(pending)
                pending = (progress.step + 1, epoch + 1, host_batch["index"], metrics)
                progress.step += 1
                bar.update(1)
                if preempted := stop.after_dispatch(progress.step):
                    break
            finished(pending)  # the epoch's last step
            pending = None
            preempted = preempted or stop.at_epoch_end()
            state = unpack(dispatch.state())
            bar.close()
            if preempted:
                feed.rewind()
                save()
                stopped = "preempted"
                break
            result = validate(state)
            auroc = result["auroc"]
            mean_auroc = float(np.nanmean(list(auroc.values())))
            improved = runs.improves(mean_auroc, progress.best_auroc)
            if improved:
                progress.best_auroc, progress.best_step = mean_auroc, progress.step
                progress.epochs_without_improvement = 0
                best_outputs = result
            else:
                progress.epochs_without_improvement += 1
            progress.history.append({"epoch": epoch + 1, "step": progress.step, **auroc})
            writer.write(progress.step, {f"val/auroc_{t}": v for t, v in auroc.items()})
            if leader:
                print(f"epoch {epoch + 1}: validation AUROC " +
                      ", ".join(f"{t} {v:.4f}" for t, v in auroc.items()) + (" *" if improved else ""),
                      flush=True)
            save({runs.METRIC: mean_auroc})
            if progress.epochs_without_improvement >= config.early_stop_patience:
                stopped = f"early stop after {config.early_stop_patience} epochs without improvement"
                break
        if stopped == "completed" and ckpt.manager.latest_step() != progress.step:
            save()  # a run capped by max_steps mid-epoch still ends on a checkpoint
    finally:
        dispatch.close()
        preemption.restore()
        ckpt.wait()
        writer.close()
    calibration = None
    if stopped != "preempted" and config.calibration != "none" and progress.best_step >= 0:
        if best_outputs is None:  # the best epoch came before a restart: score its checkpoint again
            best_outputs = validate(trained_form(ckpt.restore_state(progress.best_step, restore_target)))
        calibration = calibrate_outputs(
            config.calibration, best_outputs["logits"], best_outputs["labels"], best_outputs["label_mask"],
            tasks, split=config.data.val_split, domain=config.data.domain, step=progress.best_step)
        if leader:
            store_calibration(ckpt.path(progress.best_step), calibration)
            print("calibration: " + (calibration.describe() if calibration else "none could be fitted"),
                  flush=True)
    summary = {"status": stopped, "step": progress.step, "best_step": progress.best_step,
               "best_val_auroc": progress.best_auroc,
               "best_checkpoint": str(ckpt.path(progress.best_step)) if progress.best_step >= 0 else None,
               "calibration": None if calibration is None else calibration.to_dict(),
               "throughput": clock.to_dict(), "history": progress.history}
    ckpt.close()
    if leader:
        # the file keeps the clock's medians; the per-step lists only the returned summary (the bench's)
        written = {**summary, "throughput": clock.to_dict(each=False)}
        runs.summary_path(workdir).write_text(json.dumps(written, indent=2))
        write_run_card(workdir)  # now with the best validation AUROC and the calibration
        if stopped == "preempted":
            print(f"saved step {progress.step} to {ckpt.directory}; resume with the same command "
                  f"(same --workdir)", flush=True)
        else:
            print(f"done ({stopped}): best validation AUROC {progress.best_auroc:.4f} at step "
                  f"{progress.best_step}, checkpoint {summary['best_checkpoint']}", flush=True)
    return summary
