"""The evaluation's settings and the models its metrics need, each loaded once per evaluation.

A metric whose weights cannot be had offline is skipped with a message saying how to provide them, unless the user
named it (`explicit`), in which case `MetricUnavailable` is raised.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from evaluation.metrics import DEFAULT_METRICS
from evaluation.registry import get_metric
from evaluation.segmenter import DEFAULT_SEGMENTER, load_segmenter
from evaluation.weights import MetricUnavailable, load_state_dict
from pipeline import plugins
from pipeline.method import devices
from pipeline.method.backbone import BackboneUnavailable, load_backbone
from pipeline.method.images import DEFAULT_MAX_PIXELS
from pipeline.method.weights import RANDOM_WEIGHTS_ID

log = logging.getLogger(__name__)

DINO_ROLES = {"vitb8": "dino_vitb8", "vits16": "dino_vits16"}  # model role -> default backbone spec
LPIPS_NAME = "lpips-v0.1-alex"


@dataclass(frozen=True)
class EvalSettings:
    metrics: tuple[str, ...] = DEFAULT_METRICS  # metric names or plug-in specs (evaluation.registry.get_metric)
    explicit: bool = False  # the user named the metrics: an unavailable one is an error rather than skipped
    metric_backbone: str | None = None  # overrides the DINO backbones: SPEC, or dino_vitb8=SPEC,dino_vits16=SPEC
    lpips_weights: str = (
        "pretrained"  # AlexNet trunk of LPIPS: pretrained | random | file:PATH (torchvision state dict)
    )
    segmenter: object = DEFAULT_SEGMENTER  # segmenter spec (evaluation.segmenter) or a segmenter object
    segmenter_weights: str | None = None  # local weights file for a torchvision segmenter
    batch_size: int = 8  # pairs per backbone batch
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images above this many pixels (decompression-bomb guard)

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(plugins.canonical(spec) for spec in self.metrics))
        for spec in self.metrics:
            get_metric(spec)  # raises, naming the metric, for an unknown name or a plug-in that cannot be loaded
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def runtime_env(self) -> dict | None:
        """Ray runtime_env with which workers can import the plug-in metrics asked for (None if none needs it)."""
        return plugins.runtime_env(get_metric(spec).compute for spec in self.metrics)

    def backbone_specs(self) -> dict[str, str]:
        """Backbone spec per DINO role, after --metric-backbone."""
        specs = {role: default for role, default in DINO_ROLES.items()}
        override = self.metric_backbone
        if not override:
            return specs
        by_default = {default: role for role, default in DINO_ROLES.items()}
        if override.split("=", 1)[0] in by_default:
            for item in override.split(","):
                name, _, spec = item.partition("=")
                if name not in by_default or not spec:
                    raise MetricUnavailable(
                        f"--metric-backbone {override!r}: use SPEC or dino_vitb8=SPEC,dino_vits16=SPEC"
                    )
                specs[by_default[name]] = spec
            return specs
        return {role: override for role in specs}


@dataclass
class MetricModels:
    """Loaded models by role, the provenance id of each available metric, and why the others were skipped."""

    models: dict[str, object] = field(default_factory=dict)  # model role (a metric's `model`) -> the model
    ids: dict[str, str] = field(default_factory=dict)  # metric -> "model spec@weights id"
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason and how to fix it

    @property
    def metrics(self) -> list[str]:
        return list(self.ids)

    def get(self, role: str | None):
        return self.models.get(role) if role else None

    @property
    def segmenter(self):
        return self.models.get("segmenter")


MODEL_LOADERS: dict[str, Callable] = {}  # model role -> fn(settings, device) -> (model, "spec@weights id")
NO_MODEL = "none"  # the model id of a metric that needs no model


def register_model(role: str):
    """Decorator: fn(settings: EvalSettings, device) -> (model, model id) loads the model of `role`; a plug-in metric
    with a model of its own registers its loader so (raising MetricUnavailable when the weights are not here)."""

    def decorate(fn: Callable) -> Callable:
        MODEL_LOADERS[role] = fn
        return fn

    return decorate


def best_device() -> torch.device:
    """The evaluation's default device: CUDA, else Apple's MPS, else the CPU (pipeline/method/devices.py)."""
    return devices.best_device(mps=True)


def load_metric_models(settings: EvalSettings, device: torch.device | str) -> MetricModels:
    """Load what the asked-for metrics need (only that), sharing one model between metrics (and roles) where they
    agree."""
    models = MetricModels()
    loaded: dict[str, object] = {}  # loader key -> (model, id), so one ViT serves every role and metric that names it
    random: dict[str, list[str]] = {}  # model id -> metrics computed with it, for one warning per model
    for spec in settings.metrics:
        metric = get_metric(spec)
        name, role = metric.name, metric.model
        try:
            model, model_id = _load_role(role, settings, device, loaded) if role else (None, NO_MODEL)
        except (MetricUnavailable, BackboneUnavailable) as exc:
            if settings.explicit:
                raise MetricUnavailable(f"metric {name} was asked for but cannot be computed: {exc}") from exc
            log.warning("skipping metric %s: %s", name, exc)
            models.skipped[name] = str(exc)
            continue
        if role:
            models.models[role] = model
        models.ids[name] = model_id
        if model_id.endswith("@" + RANDOM_WEIGHTS_ID):
            random.setdefault(model_id, []).append(name)
    for model_id, names in random.items():
        log.warning(
            "metric(s) %s use RANDOM weights (%s): their values are for smoke tests only", ", ".join(names), model_id
        )
    return models


def _load_role(role: str, settings: EvalSettings, device, loaded: dict):
    if role not in MODEL_LOADERS:
        raise MetricUnavailable(
            f"no loader for model role {role!r}: use one of {', '.join(MODEL_LOADERS)}, or register "
            f"one with @evaluation.models.register_model({role!r})"
        )
    key = _loader_key(role, settings)
    if key not in loaded:
        loaded[key] = MODEL_LOADERS[role](settings, device)
    return loaded[key]


def _loader_key(role: str, settings: EvalSettings) -> str:
    if role in DINO_ROLES:
        return f"dino:{settings.backbone_specs()[role]}"
    if role == "lpips":
        return f"lpips:{settings.lpips_weights}"
    if role == "segmenter":
        return f"segmenter:{settings.segmenter!r}"
    return role


def _load_dino(role: str):
    def load(settings: EvalSettings, device):
        try:
            backbone = load_backbone(settings.backbone_specs()[role], device)
        except BackboneUnavailable as exc:
            raise MetricUnavailable(f"{exc} (here: --metric-backbone {DINO_ROLES[role]}=file:PATH)") from exc
        return backbone, f"{backbone.spec}@{backbone.weights_id}"

    return load


for _role in DINO_ROLES:
    register_model(_role)(_load_dino(_role))


@register_model("lpips")
def _load_lpips(settings: EvalSettings, device):
    return load_lpips(settings.lpips_weights, device)


@register_model("segmenter")
def _load_segmenter(settings: EvalSettings, device):
    segmenter = load_segmenter(settings.segmenter, device, settings.segmenter_weights)
    return segmenter, f"{segmenter.name}@{segmenter.weights_id}"


def load_lpips(weights: str, device) -> tuple[torch.nn.Module, str]:
    """LPIPS v0.1 with AlexNet. The linear layers ship with the `lpips` package; the AlexNet trunk is torchvision's
    ImageNet weights (torch hub cache, a local file, or random for tests)."""
    import lpips
    from torchvision.models import AlexNet_Weights

    # pnet_rand=True builds the trunk without torchvision's own download; real weights are loaded below
    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    if weights == "random":  # --lpips-weights random
        weights_id = RANDOM_WEIGHTS_ID
    elif weights == "pretrained" or weights.startswith("file:"):
        local = weights.split(":", 1)[1] if weights.startswith("file:") else None
        state, weights_id = load_state_dict(
            AlexNet_Weights.IMAGENET1K_V1.url,
            "LPIPS AlexNet trunk (metric lpips_structure)",
            local,
            option="--lpips-weights file:PATH",
        )
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        for stage in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
            stage.load_state_dict({k: features[k] for k in stage.state_dict()})
    else:
        raise MetricUnavailable(f"--lpips-weights {weights!r}: use pretrained, random or file:PATH")
    model = model.eval().requires_grad_(False).to(device)
    return model, f"{LPIPS_NAME}@{weights_id}"
