"""A model's `pretrained_cfg`: how its inputs are prepared and where released weights live.

The facts come from the authors' released training code (ggjy/CMT.pytorch):
each variant is trained and evaluated at its own resolution (Table 2), with
images resized by 256/224 of the crop and center-cropped (crop_pct 0.875),
bicubic interpolation and the ImageNet mean/std. timm's data tools read
these keys (`timm.data.resolve_data_config(model=m)`), so a model built
outside timm answers them too.
"""

from __future__ import annotations

from typing import Any

from cmt_gen.spec.schema import CMTSpec

RELEASE = "https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/"
# The authors' checkpoints, by bundled spec; CMT-L was never released.
RELEASE_URLS = {
    "cmt_ti": RELEASE + "cmt_tiny.pth",
    "cmt_xs": RELEASE + "cmt_xs.pth",
    "cmt_s": RELEASE + "cmt_small.pth",
    "cmt_b": RELEASE + "cmt_base.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 224 / 256
FIRST_CONV = "stem.0.conv"
CLASSIFIER = "head.fc"


def release_url(spec: CMTSpec) -> str:
    """The released checkpoint of a bundled spec, if its layers (and so its weights' shapes) are still the released
    ones; the position biases' shapes follow the resolution. timm adapts the classifier and input channels."""
    url = RELEASE_URLS.get(spec.name)
    if url is None:
        return ""
    from cmt_gen.spec.loading import load_spec

    released = load_spec(spec.name)
    fields = ("resolution", "stem", "stages", "block", "qkv_bias")
    same = all(getattr(spec, f) == getattr(released, f) for f in fields) and (
        spec.head.fc_channels == released.head.fc_channels)
    return url if same else ""


def pretrained_cfg_for(spec: CMTSpec) -> dict[str, Any]:
    """timm's pretrained-cfg keys for a spec (timm's names, plain data)."""
    r, stride = spec.resolution, spec.total_stride
    return {
        "architecture": spec.name,
        "url": release_url(spec),
        "num_classes": spec.num_classes,
        "input_size": (spec.in_channels, r, r),
        "pool_size": (r // stride, r // stride),
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": FIRST_CONV,
        "classifier": CLASSIFIER,
        "origin_url": "https://github.com/ggjy/CMT.pytorch",
        "paper_ids": "arXiv:2107.06263",
    }
