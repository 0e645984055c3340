"""Train a task on folders of images: validate → load → normalise → split → fit → model folder.

A run folder holds ``config.yaml``, ``normalization.json``, ``checkpoints/``,
``metrics.csv``, ``validation.json`` and, when training ends, ``model/``. An interrupted
run (even ``kill -9``) is continued with ``resume=True`` from its last finished epoch.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from deepscope.config import TaskConfigBase, load_config
from deepscope.data.axes import to_channel_first
from deepscope.data.io import AxesGuessWarning, atomic_write_text, read_image
from deepscope.data.normalize import PercentileNormalizer
from deepscope.data.patches import RandomPatches, split_train_val
from deepscope.data.validation import ValidationReport
from deepscope.engine import distributed
from deepscope.engine import trainer as engine
from deepscope.engine.callbacks import StopWhenDiverged
from deepscope.engine.module import TaskModule
from deepscope.errors import DeepscopeError, OutputError
from deepscope.tasks import get_task
from deepscope.tasks.base import Task, TrainingData
from deepscope.workflow import transfer
from deepscope.workflow.held_out import record_training_arrays, record_training_images
from deepscope.workflow.model_folder import save_model_folder

#: Steps run on the finished model folder, per task: "module:function" called as
#: ``function(model_dir, val_images_raw, val_targets, log)`` with the validation part of
#: the data (not normalised), e.g. StarDist's threshold tuning.
AFTER_TRAINING: dict[str, str] = {
    "stardist": "deepscope.workflow.stardist_thresholds:tune_after_training",
    "semantic": "deepscope.workflow.semantic_thresholds:tune_after_training",
}


class ValidationFailed(DeepscopeError):
    """The data has problems that block training (see ``report``)."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(
            "the data check found problems that block training:\n" + report.format(),
            fix="fix the problems listed above (check again with 'deepscope validate') and "
            "run again",
        )


@dataclass
class TrainResult:
    """Where the results of a training are."""

    run_dir: Path
    #: The model folder; None in the processes other than the main one of a
    #: multi-process training (the main one makes it).
    model_dir: Path | None
    epochs_trained: int
    best_val_loss: float
    stopped_because: str
    minutes: float


def load_images(
    paths: list[Path], axes: str | None, spatial_dims: int
) -> tuple[list[np.ndarray], str]:
    """Read images as channel-first float32 arrays; return them and the first file's axes."""
    arrays, first_axes = [], ""
    for p in paths:
        img = read_image(p, axes=axes)
        first_axes = first_axes or img.axes
        arrays.append(to_channel_first(img.data, img.axes, spatial_dims, path=p).astype(np.float32))
    return arrays, first_axes


#: What a new run writes before its training starts: removed again (with the folder, if
#: this command made it) when the run fails before its first epoch (see :func:`train`).
_WRITTEN_BEFORE_TRAINING = (
    "config.yaml",
    "validation.json",
    "normalization.json",
    "split.json",
    "transfer.json",
    "processes.json",
)

#: Settings a resumed training takes from the caller; every other one is the run's own.
_RESUME_CHANGEABLE = ("training.epochs", "training.max_minutes")


def _resume_config(run_dir: Path, config: TaskConfigBase) -> TaskConfigBase:
    """The saved config of the run to resume, with the caller's epochs and time budget.

    Only the length of training may change when resuming, and only where it was given
    (e.g. --epochs): what was left out keeps the run's own setting, not the default (a
    run of 1000 epochs resumed without --epochs must not become 100).

    Raises
    ------
    DeepscopeError
        When there is no run to resume, when it is a training of another task, or when
        settings given by the caller (options, a --config file) differ from the run's:
        they would not be used, and a resumed training must not silently ignore them.
    """
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise DeepscopeError(
            "there is no interrupted training to resume here (config.yaml is missing)",
            run_dir,
            "give the run folder of the training to continue, or start without --resume",
        )
    saved = load_config(cfg_path)
    if saved.task != config.task:
        raise DeepscopeError(
            f"this run folder holds a training of task {saved.task}, so it cannot be resumed "
            f"as a training of task {config.task}",
            run_dir,
            f"resume it as 'deepscope train {saved.task} ... --resume', or start the "
            f"{config.task} training in a new --out folder",
        )
    given = _flat(config.model_dump(mode="json", exclude_unset=True))
    own = _flat(saved.model_dump(mode="json"))
    differing = [
        f"{key} {_words(value)} (the run has {_words(own.get(key))})"
        for key, value in given.items()
        if key not in (*_RESUME_CHANGEABLE, "task", "version") and value != own.get(key)
    ]
    if differing:
        raise DeepscopeError(
            "a resumed training keeps the settings it was started with (its config.yaml), "
            "but other settings were given: " + "; ".join(differing),
            run_dir,
            "leave these settings out (options, or lines of the --config file) to continue "
            "the training as it was started: only --epochs and --max-minutes can change; or "
            f"train with the new settings in a new --out folder{_from_hint(run_dir)}",
        )
    for key in _RESUME_CHANGEABLE:
        name = key.split(".")[1]
        if name in config.training.model_fields_set:
            setattr(saved.training, name, getattr(config.training, name))
    return saved


def _from_hint(run_dir: Path) -> str:
    """How a new training starts from the run's model, if it has one yet."""
    model = run_dir / "model"
    if (model / "deepscope_model.json").exists():
        return f" (add --from {model} to start from this run's model)"
    return ""


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings dict as dotted keys (``{"training.epochs": 5}``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _words(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def _check_same_data(run_dir: Path, images: Path, targets: Path | None) -> None:
    """Refuse to resume a run on other data than it was trained on.

    The run's ``validation.json`` records its images (and targets) folder; a run whose
    record has none (older runs) is not checked.
    """
    try:
        summary = json.loads((run_dir / "validation.json").read_text()).get("summary") or {}
    except (OSError, ValueError, AttributeError):
        return
    for key, given, option in (
        ("images_folder", images, "--images"),
        ("targets_folder", targets, "--targets (--masks)"),
    ):
        recorded = summary.get(key)
        if not isinstance(recorded, str) or not recorded or given is None:
            continue
        if _same_folder(recorded, Path(given)):
            continue
        gone = not Path(recorded).expanduser().exists()
        raise DeepscopeError(
            f"this training was trained on {recorded}, not on {given} ({option}): a "
            "resumed training continues the same model on the same data (its "
            "normalisation and validation images come from that data)"
            + (f"; {recorded} no longer exists" if gone else ""),
            run_dir,
            f"resume with {option.split()[0]} {recorded}; to train on other data, start a new "
            f"training in a new --out folder{_from_hint(run_dir)}; if {given} holds the same "
            f'files, moved from {recorded}, write its path as "{key}" into '
            f"{run_dir / 'validation.json'} and run again",
        )


def _same_folder(recorded: str, given: Path) -> bool:
    """Whether the recorded data folder is ``given`` (resolved: links, ``..``, relative).

    Runs record the folder as it was given: a relative one is relative to the folder the
    training was started from, which is not known, so it also matches a ``given`` folder
    whose path ends with it.
    """
    here = given.expanduser().resolve()
    then = Path(recorded).expanduser()
    if then.resolve() == here:
        return True
    if then.is_absolute():
        return False
    parts = [p for p in Path(os.path.normpath(then)).parts if p not in (os.curdir, os.pardir)]
    return bool(parts) and list(here.parts[-len(parts) :]) == parts


def _prepare_run_dir(run_dir: Path, config: TaskConfigBase, resume: bool) -> None:
    """Write the new run's config.yaml, or tidy the run to resume."""
    cfg_path = run_dir / "config.yaml"
    if resume:
        for leftover in (run_dir / "checkpoints").glob(".*.partial"):
            leftover.unlink()  # a save interrupted by a crash; the previous file is intact
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise OutputError(
            "this run folder already holds a training",
            run_dir,
            "choose a new --out folder, or add --resume to continue that training",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, config.to_yaml())
    except OSError as err:
        raise OutputError(
            f"cannot write the run folder ({err.strerror})",
            run_dir,
            "choose a folder you can write to, with free space",
        ) from None


def _remove_unstarted_run(run_dir: Path, made: bool) -> None:
    """Remove what a new run wrote before it failed to start, and its folder if ``made``.

    The folder was empty (or new) before the run: only deepscope's own files are removed,
    and the folder only when this command made it and nothing else is in it.
    """
    for name in _WRITTEN_BEFORE_TRAINING:
        (run_dir / name).unlink(missing_ok=True)
    for folder in [run_dir / "checkpoints"] + ([run_dir] if made else []):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass


def _record(report: ValidationReport) -> dict[str, Any]:
    """The data check for ``validation.json``, with the data folders as absolute paths."""
    record = report.to_dict()
    record["summary"] = summary = dict(record.get("summary") or {})
    for key in ("images_folder", "targets_folder"):
        if isinstance(summary.get(key), str):
            summary[key] = str(Path(summary[key]).expanduser().resolve())
    return record


def _resume_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The newest readable checkpoint of the run (last, else the newest periodic one).

    Returns the checkpoint and the number of epochs the run had finished when it was saved.
    """
    ckpt_dir = run_dir / "checkpoints"
    candidates = [ckpt_dir / engine.LAST] + sorted(ckpt_dir.glob("epoch_*.ckpt"), reverse=True)
    for c in candidates:
        if c.exists():
            try:
                state = engine.load_checkpoint_state(c)
            except Exception:  # noqa: BLE001  damaged file: try the next one
                continue
            return c, int(state.get("epoch", -1)) + 1
    return None


def _check_epochs_left(done: int, epochs: int, run_dir: Path) -> None:
    """Refuse a resume whose epoch limit is below the ``done`` epochs of the run."""
    if epochs < done:
        raise DeepscopeError(
            f"this training has already run {done} epochs, more than the {epochs} asked for",
            run_dir,
            f"give --epochs larger than {done} to train more, or leave --epochs out to keep "
            "the run's own number of epochs",
        )


def _write_run_file(path: Path, text: str) -> None:
    """Write a file of the run; in a multi-process training only the main process writes."""
    if distributed.is_main_process():
        atomic_write_text(path, text)


def _save_normalization(run_dir: Path, data: TrainingData, resume: bool) -> None:
    norm_path = run_dir / "normalization.json"
    if resume and norm_path.exists():
        return
    norm_d = {"input": data.normalizer.to_dict()}
    if data.target_normalizer is not None:
        norm_d["target"] = data.target_normalizer.to_dict()
    _write_run_file(norm_path, json.dumps(norm_d, indent=2))


def _patch_datasets(
    task: Task,
    report: ValidationReport,
    run_dir: Path,
    resume: bool,
    log: Callable[[str], None],
) -> TrainingData:
    """The shared pipeline: load the images, normalise, split, draw random patches."""
    config = task.config
    task_cls = type(task)
    d = config.data
    in_paths = [i for i, _ in report.items]
    with warnings.catch_warnings():  # the check of the data has said it, with its fix
        warnings.simplefilter("ignore", AxesGuessWarning)
        inputs, axes = load_images(in_paths, d.axes, d.spatial_dims)
        tgts = None
        if task_cls.needs_targets:
            tgts, _ = load_images([t for _, t in report.items], d.axes, d.spatial_dims)
    if tgts is not None:
        # Tasks whose targets need preparing (e.g. masks -> class maps, class weights).
        prepare = getattr(task, "prepare_targets", None)
        if prepare is not None:
            tgts = prepare(tgts, log)
    norm_path = run_dir / "normalization.json"
    if resume and norm_path.exists():
        norm_d = json.loads(norm_path.read_text())
        normalizer = PercentileNormalizer.from_dict(norm_d["input"])
        tnorm = PercentileNormalizer.from_dict(norm_d["target"]) if "target" in norm_d else None
    else:
        split0 = split_train_val(inputs, tgts, d.val_fraction, d.patch_size, config.training.seed)
        per_image = d.normalize_per_image
        if per_image is None:
            per_image = task_cls.normalize_per_image
        normalizer = PercentileNormalizer.fit(
            split0.train_inputs, d.normalize_low, d.normalize_high, per_image
        )
        # Per-image normalisation applies to image targets too (as CARE's and fnet's
        # training pipelines do): the pair is then compared in the same relative units.
        tnorm = (
            PercentileNormalizer.fit(
                split0.train_targets, d.normalize_low, d.normalize_high, per_image
            )
            if split0.train_targets is not None and task_cls.normalize_targets
            else None
        )
        norm_d = {"input": normalizer.to_dict()}
        if tnorm is not None:
            norm_d["target"] = tnorm.to_dict()
        _write_run_file(norm_path, json.dumps(norm_d, indent=2))
    raw_validation = None
    if tgts is not None:
        raw_split = split_train_val(
            inputs, tgts, d.val_fraction, d.patch_size, config.training.seed
        )
        raw_validation = (raw_split.val_inputs, raw_split.val_targets)
    inputs = [normalizer.normalize(a) for a in inputs]
    if tgts is not None and task_cls.normalize_targets:
        tgts = [(tnorm or normalizer).normalize(a) for a in tgts]
    split = split_train_val(inputs, tgts, d.val_fraction, d.patch_size, config.training.seed)
    log(f"{len(inputs)} image(s); {split.how}.")
    t = config.training
    if t.val_patches > t.patches_per_epoch // 2:
        # Measured on the nuclei benchmark: 256 validation patches beside 96 training
        # patches per epoch took over half of each epoch.
        log(
            f"note: each epoch checks {t.val_patches} validation patches beside "
            f"{t.patches_per_epoch} training patches, so much of the time goes into "
            "checking; raise training.patches_per_epoch or lower training.val_patches."
        )
    foreground = d.foreground_fraction
    if foreground > 0 and (tgts is None or task_cls.normalize_targets):
        raise DeepscopeError(
            f"data.foreground_fraction places patches on the objects of masks, and "
            f"{config.task} trains without masks",
            fix="remove data.foreground_fraction from the configuration",
        )
    train_ds = RandomPatches(
        split.train_inputs,
        split.train_targets,
        d.patch_size,
        t.patches_per_epoch,
        d,
        seed=t.seed,
        augment=True,
        scale_targets=task_cls.normalize_targets,
        foreground_fraction=foreground,
    )
    val_ds = RandomPatches(
        split.val_inputs,
        split.val_targets,
        d.patch_size,
        t.val_patches,
        d,
        seed=t.seed + 1,
        augment=False,
        foreground_fraction=foreground,
    )
    return TrainingData(
        train=train_ds,
        val=val_ds,
        normalizer=normalizer,
        in_channels=inputs[0].shape[0],
        axes=axes,
        n_images=len(inputs),
        target_normalizer=tnorm,
        raw_validation=raw_validation,
    )


def _prepare_training(
    task: Task,
    config: TaskConfigBase,
    report: ValidationReport,
    run_dir: Path,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[TaskModule, DataLoader, DataLoader, TrainingData, Path | None]:
    """Everything between the data check and the first epoch: data, network, start weights."""
    task_cls = type(task)
    _write_run_file(run_dir / "validation.json", json.dumps(_record(report), indent=2))
    if task_cls.image_level:
        task.config = config  # the same task object keeps the data it read while checking
    else:
        task = task_cls(config)
    data = task.make_datasets(report, run_dir, resume, log)
    if data is None:
        data = _patch_datasets(task, report, run_dir, resume, log)
    else:
        _save_normalization(run_dir, data, resume)
        if data.split is not None:
            _write_run_file(run_dir / "split.json", json.dumps(data.split, indent=2))
    t = config.training
    train_loader = DataLoader(
        data.train,
        batch_size=t.batch_size,
        shuffle=data.shuffle and data.sampler is None,
        sampler=data.sampler,
        num_workers=0,
        drop_last=len(data.train) >= t.batch_size,
    )
    val_loader = DataLoader(data.val, batch_size=t.batch_size, shuffle=False, num_workers=0)
    L.seed_everything(t.seed, workers=True, verbose=False)  # same initial weights per seed
    module = TaskModule(task, data.in_channels)
    found = _resume_checkpoint(run_dir) if resume else None
    resume_from = found[0] if found else None
    if found:
        _check_epochs_left(found[1], t.epochs, run_dir)
    if resume:
        log(
            f"resuming from {resume_from.name}"
            if resume_from
            else "no checkpoint yet: starting over"
        )
        log(
            "A resumed training keeps the settings saved in config.yaml; only the number of "
            "epochs and --max-minutes can change."
        )
    if t.start_from and resume_from is None:
        start = transfer.load_start_weights(module.model, Path(t.start_from), config)
        if distributed.is_main_process():
            transfer.save_report(start, run_dir)
        log(start.summary())
        fresh = _fresh_encoder_weights(module.model, start.not_loaded)
        if fresh and t.freeze_encoder_epochs:
            module.train_while_frozen = set(fresh)
            log(
                f"note: {len(fresh)} weight tensor(s) of the encoder did not fit and start new "
                f"({', '.join(fresh[:3])}); they are trained from the first epoch, while the "
                "rest of the encoder is kept fixed."
            )
    elif t.start_from and t.freeze_encoder_epochs:  # resumed: the start's record says
        record = transfer.read_report(run_dir) or {}
        not_loaded = record.get("not_loaded") or {}
        module.train_while_frozen = set(_fresh_encoder_weights(module.model, not_loaded))
    if t.freeze_encoder_epochs:
        log(
            f"the encoder is kept fixed for the first {t.freeze_encoder_epochs} epoch(s), "
            "then the whole network is trained."
        )
    return module, train_loader, val_loader, data, resume_from


def _fresh_encoder_weights(network: torch.nn.Module, not_loaded: Collection[str]) -> list[str]:
    """Names of the encoder's tensors the start model did not fill (``not_loaded``).

    They are trained while the rest of the encoder is frozen: there is nothing to keep.
    """
    from deepscope.engine.module import encoder_modules

    try:
        encoder = {id(p) for m in encoder_modules(network) for p in m.parameters()}
    except DeepscopeError:
        return []  # no encoder: the freezing itself says so
    return [n for n, p in network.named_parameters() if id(p) in encoder and n in not_loaded]


def train(
    config: TaskConfigBase,
    images: Path,
    run_dir: Path,
    targets: Path | None = None,
    *,
    resume: bool = False,
    listener: Callable[[dict[str, Any]], None] | None = None,
    show_bar: bool = True,
    log: Callable[[str], None] = print,
    devices: int | None = None,
    nodes: int | None = None,
) -> TrainResult:
    """Train ``config.task`` on the images in ``images`` (and ``targets``), into ``run_dir``.

    ``devices`` processes (GPUs) per computer on ``nodes`` computers train together
    (Lightning's DDP, see :mod:`deepscope.engine.distributed`); under torchrun or SLURM
    both are read from there. Every process runs this function; only the main one
    writes the run folder and the model, and the others return with ``model_dir`` None.

    Raises
    ------
    ValidationFailed
        When the data check finds problems that block training (nothing is written).
    DeepscopeError
        With ``resume``: when the run is of another task, was trained on other images
        (or targets), or when ``config`` sets something other than the run's saved
        settings besides ``training.epochs`` and ``training.max_minutes`` (nothing is
        written). A new run that fails before its first epoch (e.g. a start model
        whose weights do not fit) leaves no files behind.
    """
    run_dir = Path(run_dir)
    layout = distributed.process_layout(devices, nodes, _gpus())
    main = distributed.is_main_process()
    if not main:
        log = _silent  # the main process says it all
        show_bar = False
    if resume:
        # Before anything is read or written: the run's own task and settings, its data.
        config = _resume_config(run_dir, config)
        _check_same_data(run_dir, images, targets)
    elif config.training.start_from:
        config, adopted = transfer.adopt_start_network(config, config.training.start_from)
        if adopted:
            log(
                "network settings taken from the model to start from: "
                + ", ".join(f"{k} {v}" for k, v in adopted.items())
            )
    task_cls = get_task(config.task)
    task = task_cls(config)
    report = task.check_training_data(images, targets)
    if not report.ok:
        raise ValidationFailed(report)
    config = task.config  # a task may complete its config from the data (e.g. class names)
    for w in report.warnings:
        log(f"warning: {w.path or ''}: {w.problem}" + (f" → {w.fix}" if w.fix else ""))
    if config.training.start_from and not resume:
        transfer.check_start_model(config.training.start_from, config)
    made = not run_dir.exists()
    if main:
        _prepare_run_dir(run_dir, config, resume)
    try:
        prepared = _prepare_training(task, config, report, run_dir, resume, log)
    except BaseException:
        if (
            not resume and main
        ):  # a new run that failed before its first epoch must not block a retry
            _remove_unstarted_run(run_dir, made)
        raise
    module, train_loader, val_loader, data, resume_from = prepared
    t = config.training
    processes = layout[0] * layout[1]
    if main:
        (run_dir / "STOP").unlink(missing_ok=True)
    if layout != (1, 1):
        share = t.patches_per_epoch // processes
        if share < t.batch_size and len(train_loader.dataset) >= t.batch_size:
            if main and not resume:  # as for any run that fails before its first epoch
                _remove_unstarted_run(run_dir, made)
            raise DeepscopeError(
                f"each of the {processes} processes gets {share} of the "
                f"{t.patches_per_epoch} patches per epoch, fewer than one batch of "
                f"{t.batch_size}, so none would train",
                run_dir,
                f"raise --patches-per-epoch to at least {processes * t.batch_size}, or lower "
                "--batch-size",
            )
        log(f"training in {processes} processes ({layout[0]} per computer)")
    # Only once the run will train: a refused resumption adds no part to the record.
    process_parts = _record_processes(run_dir, layout, resume, log) if main else [processes]
    t0 = time.monotonic()
    trainer = engine.fit(
        module,
        train_loader,
        val_loader,
        run_dir,
        t,
        resume_from,
        listener,
        show_bar,
        devices=layout[0],
        nodes=layout[1],
    )
    minutes = (time.monotonic() - t0) / 60
    if not trainer.is_global_zero:  # the main process makes the model
        return TrainResult(run_dir, None, trainer.current_epoch, float("nan"), "", minutes)
    diverged = _diverged_epoch(trainer)
    if diverged == 1:
        raise DeepscopeError(
            "the training diverged in its first epoch (the validation loss was not a "
            "number), so there is no usable model",
            run_dir,
            "try a lower learning rate (--learning-rate) or --precision 32, in a new --out",
        )
    stopped = _why_stopped(trainer, run_dir, t.epochs)
    if diverged:
        log(
            f"The training diverged at epoch {diverged}: the model kept is "
            "the best one from before. Next time, try a lower learning rate "
            "(--learning-rate) or --precision 32."
        )
    training_info: dict[str, Any] = {
        "images": data.n_images,
        "minutes": round(minutes, 2),
        "stopped_because": stopped,
    }
    if module.skipped_steps:
        training_info["skipped_steps"] = module.skipped_steps
        log(
            f"{module.skipped_steps} training step(s) were skipped because a gradient was "
            "not a number."
        )
    if max(process_parts) > 1:  # how many processes trained it, start and each resumption
        training_info["processes"] = process_parts
    started_from = transfer.read_report(run_dir)
    if started_from is not None:
        training_info["started_from"] = started_from
    model_dir = export_model(
        run_dir,
        config,
        data.in_channels,
        data.axes,
        data.normalizer,
        data.target_normalizer,
        training_info,
    )
    # so that QC can tell held-out images from training ones
    if not task_cls.image_level:
        record_training_images(model_dir, images)
    elif hasattr(task, "labelled_images"):
        record_training_arrays(model_dir, *task.labelled_images())
    after = AFTER_TRAINING.get(config.task)
    if after is not None and data.raw_validation is not None:
        module_name, func = after.split(":")
        tune = getattr(importlib.import_module(module_name), func)
        tune(model_dir, *data.raw_validation, log)
    best = trainer.checkpoint_callback.best_model_score
    return TrainResult(
        run_dir,
        model_dir,
        trainer.current_epoch,
        float(best) if best is not None else float("nan"),
        stopped,
        minutes,
    )


#: The processes a run trains in: ``{"per_computer": N, "computers": M, "parts": [..]}``,
#: ``parts`` holding the number of processes of each start and resumption of the run.
PROCESSES_FILE = "processes.json"


def _record_processes(
    run_dir: Path, layout: tuple[int, int], resume: bool, log: Callable[[str], None]
) -> list[int]:
    """Write how many processes train the run; say so when a resumed run changes it.

    Each process trains on its own share of an epoch's patches with its own batches, so
    a run resumed in another number of processes goes on with another effective batch
    size (``batch_size`` x processes) from there. Returns the process count of each part
    of the run so far (this one last).
    """
    path = run_dir / PROCESSES_FILE
    count = layout[0] * layout[1]
    parts: list[int] = []
    if resume:
        try:
            parts = [int(n) for n in json.loads(path.read_text())["parts"]]
        except (OSError, ValueError, KeyError, TypeError):
            parts = [1]  # not recorded (a run from before this file): taken as one process
        if parts and parts[-1] != count:
            log(
                f"note: this run was trained in {parts[-1]} process(es) and goes on in "
                f"{count}: each step now averages {count} batch(es) instead of "
                f"{parts[-1]}, so the training goes on slightly differently from here "
                "(resume with the same --devices to keep it as it was)."
            )
    parts.append(count)
    record = {"per_computer": layout[0], "computers": layout[1], "parts": parts}
    atomic_write_text(path, json.dumps(record))
    return parts


def _silent(_message: str) -> None:
    """Log of the processes other than the main one of a multi-process training."""


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _diverged_epoch(trainer: Any) -> int | None:
    """The epoch whose validation loss was NaN or infinite (None: the training was sound)."""
    return next(
        (c.epoch for c in trainer.callbacks if isinstance(c, StopWhenDiverged) and c.epoch),
        None,
    )


def _why_stopped(trainer: Any, run_dir: Path, max_epochs: int) -> str:
    diverged = _diverged_epoch(trainer)
    if diverged:
        return f"stopped because it diverged at epoch {diverged} (the validation loss was NaN)"
    if (run_dir / "STOP").exists():
        (run_dir / "STOP").unlink(missing_ok=True)
        return "stopped on request"
    if trainer.current_epoch >= max_epochs:
        return f"finished all {max_epochs} epochs"
    return "time budget reached"


def _network_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The network's weights from a loaded Lightning checkpoint."""
    state = checkpoint["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def export_model(
    run_dir: Path,
    config: TaskConfigBase,
    in_channels: int,
    axes: str,
    normalizer: PercentileNormalizer,
    target_normalizer: PercentileNormalizer | None,
    training: dict[str, Any],
) -> Path:
    """Write ``run_dir/model`` from the run's best checkpoint and its periodic checkpoints."""
    ckpt_dir = run_dir / "checkpoints"
    best_path = ckpt_dir / engine.BEST
    if not best_path.exists():
        best_path = ckpt_dir / engine.LAST
    if not best_path.exists():
        raise DeepscopeError(
            "training stopped before the first epoch finished, so there is no model to save",
            run_dir,
            "give more time (--max-minutes) or fewer patches per epoch, then run with --resume",
        )
    best_ckpt = engine.load_checkpoint_state(best_path)
    last_path = ckpt_dir / engine.LAST
    last_ckpt = engine.load_checkpoint_state(last_path) if last_path.exists() else None
    checkpoints = {
        p.stem: _network_state(engine.load_checkpoint_state(p))
        for p in sorted(ckpt_dir.glob("epoch_*.ckpt"))
    }
    if last_ckpt is not None:
        checkpoints["last"] = _network_state(last_ckpt)
    training = dict(training)
    training["best_epoch"] = int(best_ckpt.get("epoch", -1)) + 1
    cb = {
        k: v
        for k, v in best_ckpt.get("callbacks", {}).items()
        if k.startswith("ModelCheckpoint") and "'val_loss'" in k
    }  # the best-model callback
    for state in cb.values():
        if state.get("best_model_score") is not None:
            training["best_val_loss"] = round(float(state["best_model_score"]), 6)
    training["epochs_trained"] = (
        int(last_ckpt["epoch"]) + 1 if last_ckpt is not None else training["best_epoch"]
    )
    return save_model_folder(
        run_dir / "model",
        config=config,
        weights=_network_state(best_ckpt),
        in_channels=in_channels,
        input_axes=axes,
        normalizer=normalizer,
        target_normalizer=target_normalizer,
        checkpoints=checkpoints,
        history_csv=run_dir / "metrics.csv",
        training=training,
    )
