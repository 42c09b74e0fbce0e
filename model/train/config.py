"""The training config as one typed object: model/train/configs/default.yaml ← `--config FILE` ← flags.

`TrainConfig` mirrors the sections of default.yaml; its defaults are that file's values (a test
keeps the two equal). Every level rejects keys it does not know, naming the key and the layer
it came from, so a typo such as `optim.lrr` stops the run instead of silently training with the
default. `arch` stays free-form (the backbone's keyword arguments) and `data.roots` a mapping.
`config.to_dict()` is the plain dict written to config.json and the model card.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"

# Keys whose mapping a later layer replaces instead of merging into (a new dataset list, a new
# backbone); any other nested mapping is merged key by key.
REPLACED_MAPPINGS = ("roots", "arch")


class ConfigError(ValueError):
    """A config layer (file or flag) that does not fit TrainConfig."""


class _Section(BaseModel):
    """A config mapping: unknown keys are errors; a number given for a string field becomes that
    string (YAML reads `version: 0.2` or `folds: 3` as numbers)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class DataConfig(_Section):
    # name=path; LFW identities keep their folder names, others are prefixed by the name
    roots: dict[str, str] = Field(default_factory=lambda: {
        "lfw": "../shared/data/lfw/lfw-deepfunneled", "celeba": "../shared/data/celeba-extra"})
    exclude_identities_from: str | None = None  # a pairs file: its identities never reach training
    exclude_folds: str | None = None            # e.g. "1-5": only those folds' identities
    # which face of a photo with several is aligned (model.face.pipeline.FACE_CHOICES)
    face_choice: Literal["largest", "central"] = "largest"


class LossConfig(_Section):
    name: Literal["contrastive", "triplet"] = "contrastive"
    margin: float = 1.25


class SamplerConfig(_Section):
    p: int = 32      # identities per batch
    k: int = 4       # images per identity
    extra: int = 0   # images drawn uniformly from the whole set on top of each P×K batch


class OptimConfig(_Section):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 0.003
    weight_decay: float = 0.0005
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 100
    # cosine over the run (over wall-clock when max_minutes is set) | constant
    schedule: Literal["cosine", "constant"] = "cosine"


class AugmentConfig(_Section):
    """Keyword arguments of model.train.data.augment."""
    flip: float = 0.5
    max_shift: int = 6
    scale_jitter: float = 0.08
    color: float = 0.25


class DistillConfig(_Section):
    loss: Literal["off", "cosine", "relational"] = "off"  # model/train/losses.py DistillationLoss
    # centred / whitened: model/train/teacher.py (for students); unit: the teacher's own vectors,
    # only normalised (fine-tuning the teacher's network in its own embedding space)
    targets: Literal["centred", "whitened", "unit"] = "centred"
    weight: float = 1.0
    contrastive_weight: float = 1.0
    store: str = "cache/teacher/dlib_face_recognition_resnet_model_v1.npz"
    precomputed: str | None = "../shared/data/teacher/dlib-teacher.npz"  # seeds an empty store
    precomputed_roots: dict[str, str] | None = Field(default_factory=lambda: {
        "lfw": "../shared/data/lfw/lfw-deepfunneled",
        "celeba-extra": "../shared/data/celeba-extra"})
    workers: int = 2

    @field_validator("loss", mode="before")
    @classmethod
    def _unquoted_off(cls, value: Any) -> Any:
        """YAML reads an unquoted `off` as false; null and false meant "off" before too."""
        return "off" if value is None or value is False else value

    @property
    def enabled(self) -> bool:
        return self.loss != "off"


class EvalConfig(_Section):
    pairs: str | None = "../shared/data/lfw/pairsDevTest.txt"  # null or "none": no monitoring
    folds: str | None = None
    every_epochs: int = 2


class TrainConfig(_Section):
    """The whole training recipe (field order = default.yaml's, which to_dict keeps)."""
    name: str = "faceverify-mfn"
    version: str = "0.1.0"
    arch: dict[str, Any] = Field(default_factory=lambda: {  # the backbone's kwargs, free-form
        "arch": "mobilefacenet", "embedding_dim": 128, "width": 0.5, "depth": [2, 1, 3, 1, 1],
        "final_channels": 256})
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    init_from: str | None = None  # warm start from these weights
    epochs: int = 40
    max_minutes: float | None = None
    seed: int = 0
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run_dir: str = "runs"
    output_dir: str = "weights"
    checkpoint_every_epochs: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready) for config.json, checkpoints and the model card."""
        return self.model_dump()


# --------------------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                sources: Mapping[str, str] | None = None) -> TrainConfig:
    """default.yaml ← the YAML file at `path` ← `overrides` (dotted keys such as 'optim.lr';
    None values are skipped). `sources` names where an override came from (e.g.
    {'optim.lr': 'flag --lr'}) for error messages; otherwise it is called an override.

    Raises ConfigError for an unknown key or a value of the wrong type, naming the layer."""
    merged: dict[str, Any] = {}
    layers = [(DEFAULT_CONFIG, str(DEFAULT_CONFIG))] + ([(Path(path), str(path))] if path else [])
    for file, source in layers:
        _deep_update(merged, _read_yaml(file, source))
        _validate(merged, source)  # everything before this layer was valid: errors are its own
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
        _validate(merged, (sources or {}).get(dotted, f"override {dotted!r}"))
    return TrainConfig.model_validate(merged)


def _read_yaml(path: Path, source: str) -> dict[str, Any]:
    import yaml
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{source} must be a mapping of config keys, not "
                          f"{type(content).__name__}")
    return content


def _deep_update(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in REPLACED_MAPPINGS:
            _deep_update(base[k], v)
        else:
            base[k] = v


def _validate(merged: dict[str, Any], source: str) -> None:
    try:
        TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(err, source) for err in exc.errors())) from None


def _describe(err: Any, source: str) -> str:
    """One pydantic error as a line naming the dotted key and its layer."""
    loc = tuple(err["loc"])
    key = ".".join(str(part) for part in loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(loc[:-1])
        known = ", ".join(section.model_fields) if section else "?"
        return f"unknown key {key!r} in {source}; known: {known}"
    return f"{key!r} in {source}: {err['msg']} (got {err['input']!r})"


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class of the section at this key path (None below a free-form mapping)."""
    section: type[BaseModel] = TrainConfig
    for part in loc:
        field = section.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        section = annotation
    return section
