"""Loading a teacher from disk: the embedded default, a diffusers model folder, or a pipeline folder.

    default                   clarep_fast/pipeline/assets/teacher (a UNet2DModel; the DDPM linear schedule)
    default-dit               clarep_fast/pipeline/assets/teacher-dit (a DiTTransformer2DModel, same data and schedule)
    model folder              config.json (+ weights) of a UNet2DModel or DiTTransformer2DModel (save_pretrained)
    pipeline folder           model_index.json with unet/ or transformer/, optionally vae/ (AutoencoderKL:
                              a latent teacher) and scheduler/ (its noise schedule and prediction type)
    ORG/NAME[@REVISION]       a Hub id, resolved offline in the local Hugging Face cache (HF_HUB_CACHE,
                              else HF_HOME/hub, else ~/.cache/huggingface/hub) to its snapshot folder
A model folder has no scheduler: it gets the DDPM linear schedule with ε-prediction, unless a
scheduler_config.json sits beside its config.json. Every file is read locally (no Hub access).

Class names as diffusers loads them: ``Transformer2DModel`` with ``norm_type: ada_norm_zero`` (the
layout of facebook/DiT-XL-2-256, written by diffusers 0.12) is a DiTTransformer2DModel, as diffusers
itself maps it; configs from older diffusers versions take diffusers' defaults for missing keys.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from clarep_fast.pipeline.files import read_json
from clarep_fast.pipeline.teacher.model import Teacher
from clarep_fast.pipeline.teacher.schedule import NoiseSchedule

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# --teacher names of the teachers shipped with the package (trained on the default data: docs/teacher.md)
EMBEDDED_TEACHERS = {"default": ASSETS / "teacher", "default-dit": ASSETS / "teacher-dit"}
DEFAULT_TEACHER = EMBEDDED_TEACHERS["default"]
DENOISERS = ("UNet2DModel", "DiTTransformer2DModel")
# A _class_name diffusers loads as another class, by one config key (diffusers' own remapping):
# Transformer2DModel with ada_norm_zero is the class-conditional DiT.
REMAPPED_CLASSES = {"Transformer2DModel": ("norm_type", {"ada_norm_zero": "DiTTransformer2DModel"})}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def teacher_folder(spec: str) -> Path:
    """The folder a --teacher value names ('default', 'default-dit': an embedded teacher; a Hub id
    that is not a local path: its snapshot in the local Hugging Face cache)."""
    if spec in EMBEDDED_TEACHERS:
        return EMBEDDED_TEACHERS[spec]
    path = Path(spec).expanduser()
    if path.exists() or not HUB_ID.fullmatch(spec):
        return path
    return hub_snapshot(spec)


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded repositories, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def hub_snapshot(spec: str) -> Path:
    """The local snapshot folder of the Hub id ORG/NAME[@REVISION]; never a network call."""
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    cache = hub_cache()
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=cache, local_files_only=True))
    except Exception as error:  # huggingface_hub's LocalEntryNotFoundError moves between its versions
        raise FileNotFoundError(
            f"teacher {spec!r} is not a folder here and not in the local Hugging Face cache {cache} "
            f"({type(error).__name__}); on a machine with network run `hf download {repo}"
            f"{f' --revision {revision}' if revision else ''}` (HF_HOME or HF_HUB_CACHE as here) and copy the cache, "
            "or pass the model's folder"
        ) from None


def load_teacher(spec: str | Path) -> Teacher:
    """The teacher a --teacher value names; a missing, damaged or foreign folder is refused by name."""
    path = teacher_folder(str(spec))
    if (path / "model_index.json").exists():
        return _load_pipeline(path)
    if not (path / "config.json").exists():
        if str(spec) in EMBEDDED_TEACHERS:
            raise FileNotFoundError(f"the embedded teacher {spec!r} is missing from {path}; reinstall clarep_fast")
        raise FileNotFoundError(
            f"teacher {path} is neither a diffusers model folder (config.json) nor a pipeline folder (model_index.json)"
        )
    config = _read_config(path / "config.json", "a diffusers model config")
    return Teacher(
        load_model(path, DENOISERS), _schedule(path / "scheduler_config.json"), None, class_names(config, path)
    )


def _load_pipeline(path: Path) -> Teacher:
    index = _read_config(path / "model_index.json", "a diffusers pipeline index")
    parts = [name for name in ("unet", "transformer") if name in index and (path / name / "config.json").exists()]
    if len(parts) != 1:
        raise ValueError(
            f"pipeline {path} must hold exactly one denoiser folder, unet/ or transformer/ (found {parts or 'none'})"
        )
    denoiser = load_model(path / parts[0], DENOISERS)
    vae = load_model(path / "vae", ("AutoencoderKL",)) if (path / "vae" / "config.json").exists() else None
    return Teacher(denoiser, _schedule(path / "scheduler" / "scheduler_config.json"), vae, class_names(index, path))


def class_names(config: dict, path: Path) -> list[str] | None:
    """The class names of a checkpoint's id2label table (model_index.json or config.json; the Hub's
    DiT pipelines carry one), in label order; None without one."""
    table = config.get("id2label")
    if table is None:
        return None
    try:
        labels = sorted((int(key), str(name)) for key, name in dict(table).items())
    except (TypeError, ValueError):
        raise ValueError(f"{path}: id2label must map label numbers to names, got {str(table)[:80]}") from None
    if [label for label, _ in labels] != list(range(len(labels))):
        raise ValueError(f"{path}: id2label must number its classes 0..{len(labels) - 1}")
    return [name for _, name in labels]


def _schedule(file: Path) -> NoiseSchedule:
    """The schedule a scheduler config sets, or DDPM's linear one where there is none."""
    return (
        NoiseSchedule.from_scheduler_config(_read_config(file, "a diffusers scheduler config"), file)
        if file.exists()
        else NoiseSchedule.default()
    )


def _read_config(path: Path, what: str) -> dict:
    content = read_json(path, what, "restore the teacher folder")
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not {what} (a JSON object)")
    return content


def load_model(path: Path, kinds: tuple[str, ...]) -> nn.Module:
    """A diffusers model folder whose class is one of ``kinds``, in eval mode."""
    import diffusers

    config = _read_config(path / "config.json", "a diffusers model config")
    kind = config.get("_class_name")
    if kind in REMAPPED_CLASSES:
        key, targets = REMAPPED_CLASSES[kind]
        if targets.get(config.get(key)) not in kinds:
            raise ValueError(
                f"{path}: a {kind} with {key} {config.get(key)!r} is not a class-conditional denoiser this "
                f"project runs; expected a {' or '.join(kinds)} (a {kind} with "
                + " or ".join(f"{key} {value!r}" for value, target in targets.items() if target in kinds)
                + ")"
            )
        kind = targets[config[key]]
    if kind not in kinds:
        raise ValueError(f"{path}: expected a {' or '.join(kinds)}, found {kind!r}")
    try:
        # plain loading: no advice to install accelerate
        model = getattr(diffusers, kind).from_pretrained(path, low_cpu_mem_usage=False).eval()
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        # a truncated or garbled weight file, a config that does not build
        first = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(
            f"{path} cannot be loaded ({type(error).__name__}: {first}); the folder's config.json or weights are damaged or not a diffusers model"
        ) from None
    # a diverged training run saves NaN weights that load without complaint
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{path}: its weight {name} holds NaN or Inf; the model diverged in training or its weights are damaged"
            )
    return model


def check_fits(
    teacher: Teacher, *, classes: int | None = None, resolution: int | None = None, where: str = "the teacher"
) -> None:
    """A teacher whose class count or image size does not fit the data is refused, naming both."""
    if classes is not None and teacher.num_classes != classes:
        raise ValueError(f"{where} knows {teacher.num_classes} classes but the data has {classes}")
    if resolution is not None and teacher.resolution != resolution:
        kind = (
            f"its VAE decodes {teacher.resolution}×{teacher.resolution}"
            if teacher.is_latent
            else f"it works at {teacher.resolution}×{teacher.resolution}"
        )
        raise ValueError(f"{where} does not fit the data: {kind}, the data is {resolution}×{resolution} (--resolution)")


def teacher_fingerprint(spec: str | Path) -> str:
    """sha256 over every config and weight file of the teacher folder (sub-folders included): a copy
    with another activation, schedule or weights is another teacher, and a bank never mixes two."""
    path = teacher_folder(str(spec))
    digest = hashlib.sha256()
    for file in sorted(p for suffix in ("*.json", "*.safetensors", "*.bin") for p in path.rglob(suffix)):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
