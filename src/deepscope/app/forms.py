"""Settings forms generated from the tasks' pydantic configs.

The form of a task lists every field of its config class: sections (``data``, ``model``,
``training`` and the task's own) with, per field, its dotted key, a widget kind, the
default, the allowed range or choices, and the field's description as the explanation.
The same config class then validates what the page sends back
(:func:`config_from_settings`), so the command line, the API and the page cannot disagree.
A task added later gets its form without changes here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from deepscope.config import TaskConfigBase, config_from_dict, merge_overrides
from deepscope.errors import ConfigError
from deepscope.tasks import available_tasks, get_task

#: Fields shown unfolded for every task; the rest of the shared sections is "advanced".
BASIC_FIELDS = (
    "data.axes",
    "data.spatial_dims",
    "data.patch_size",
    "training.epochs",
    "training.max_minutes",
    "training.start_from",
    "training.freeze_encoder_epochs",
)
#: How many of a task's own settings are shown unfolded, unless the task class names
#: them in an ``app_basic_fields`` tuple of dotted keys.
TASK_BASIC_COUNT = 3
SHARED_SECTIONS = ("data", "model", "training")
SECTION_TITLES = {
    "data": "Images and training pieces",
    "model": "Network",
    "training": "Training",
}
NO_DESCRIPTION = "(no explanation written for this setting yet)"


def _widget(schema: dict[str, Any]) -> dict[str, Any]:
    """Widget kind and constraints from a field's JSON schema."""
    nullable = False
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        if len(options) == 1:
            inner = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
            out = _widget(inner)
            out["nullable"] = nullable
            return out
        return {"kind": "json", "nullable": nullable}
    if "const" in schema:
        return {"kind": "fixed", "nullable": False}
    if "enum" in schema:
        return {"kind": "choice", "choices": schema["enum"], "nullable": nullable}
    kind = schema.get("type")
    if kind == "boolean":
        return {"kind": "bool", "nullable": nullable}
    if kind in ("integer", "number"):
        out: dict[str, Any] = {"kind": kind, "nullable": nullable}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                out[key] = schema[key]
        return out
    if kind == "array":
        items = schema.get("items", {}).get("type", "string")
        return {"kind": "list", "items": items, "nullable": nullable}
    if kind == "string":
        return {"kind": "text", "nullable": nullable}
    return {"kind": "json", "nullable": nullable}


def _section_fields(
    section: str, cls: type[BaseModel], defaults: dict[str, Any], basic: set[str]
) -> list[dict[str, Any]]:
    props = cls.model_json_schema().get("properties", {})
    fields = []
    for name, info in cls.model_fields.items():
        key = f"{section}.{name}"
        widget = _widget(props.get(name, {}))
        if widget["kind"] == "fixed":
            continue  # one possible value: nothing to choose
        fields.append(
            {
                "key": key,
                "label": name.replace("_", " "),
                "description": info.description or NO_DESCRIPTION,
                "default": defaults.get(name),
                "advanced": key not in basic,
                **widget,
            }
        )
    return fields


def task_form(task_name: str) -> dict[str, Any]:
    """The settings form of a task: sections of fields with defaults and explanations.

    Raises
    ------
    ConfigError
        For an unknown task name.
    """
    try:
        task_cls = get_task(task_name)
    except KeyError as err:
        raise ConfigError(str(err.args[0]), fix="choose one of the listed tasks") from None
    config_cls: type[TaskConfigBase] = task_cls.config_class
    defaults = config_cls.model_validate({"task": task_name}).model_dump(mode="json")
    sections = []
    own = [n for n in config_cls.model_fields if n not in ("version", "task", *SHARED_SECTIONS)]
    basic = set(BASIC_FIELDS)
    for name in own:
        sub = config_cls.model_fields[name].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            listed = getattr(task_cls, "app_basic_fields", None)
            names = list(sub.model_fields)
            basic |= set(listed) if listed else {f"{name}.{n}" for n in names[:TASK_BASIC_COUNT]}
    for name in [*own, *SHARED_SECTIONS]:
        sub = config_cls.model_fields[name].annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            continue
        sections.append(
            {
                "name": name,
                "title": SECTION_TITLES.get(name, f"{task_cls.title} settings"),
                "description": (sub.__doc__ or "").strip().splitlines()[0] if sub.__doc__ else "",
                "fields": _section_fields(name, sub, defaults.get(name, {}), basic),
            }
        )
    return {"task": task_name, "title": task_cls.title, "sections": sections, "defaults": defaults}


def task_summaries() -> list[dict[str, Any]]:
    """Every registered task with its title, description and what data it needs."""
    out = []
    for name in available_tasks():
        cls = get_task(name)
        needs = (
            "a folder of images and a folder of "
            + ("masks (label images)" if not cls.normalize_targets else "target images")
            + " with the same file names"
            if cls.needs_targets
            else "a folder of images (no targets needed)"
        )
        out.append(
            {
                "name": name,
                "title": cls.title,
                "description": cls.description,
                "needs_targets": bool(cls.needs_targets),
                "targets_are_labels": not cls.normalize_targets,
                "data_needed": needs,
            }
        )
    return out


def config_from_settings(task_name: str, settings: dict[str, Any]) -> TaskConfigBase:
    """Validate the form's values (dotted keys) with the task's config class.

    Values that are None leave the default in place.

    Raises
    ------
    ConfigError
        With every invalid setting in plain words.
    """
    unknown = [k for k in settings if not isinstance(k, str) or k.count(".") != 1]
    if unknown:
        raise ConfigError(
            f"settings must be named 'section.field', not {', '.join(map(str, unknown))}",
            fix="use the names shown in the form, e.g. training.epochs",
        )
    if "task" in settings:
        raise ConfigError("the task is chosen separately, not as a setting")
    return config_from_dict(merge_overrides({"task": task_name}, settings))
