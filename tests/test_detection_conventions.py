"""The FLOPs convention of Tables 7 and 8: mmcv's module-hook rules, the peer detectors, the printed figures.

Fast: each mmcv rule on a module small enough to count by hand, and the peers'
parameters. Slow (1280x800 forwards of ResNet-101 detectors): mmcv's
convention reproduces the printed 315B and 336B.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cmt_gen.detection.conventions import (  # noqa: E402
    mmcv_style_count,
    mmcv_style_counts,
    mmdet_relu_delta,
    trainable_params,
)
from cmt_gen.errors import CmtGenError  # noqa: E402
from cmt_gen.spec.quantity import printed_interval  # noqa: E402


def count(module: nn.Module, *shape: int) -> int:
    return mmcv_style_count(module, torch.zeros(*shape))


# ---------------------------------------------------------------- mmcv's rules, by hand

def test_conv_counts_macs_plus_one_bias_add_per_output_element():
    # 8x8 output, 3x3 kernel, 3 -> 4 channels: 64 positions x 9*3*4 MACs, plus 64 x 4 bias adds
    assert count(nn.Conv2d(3, 4, 3, padding=1), 1, 3, 8, 8) == 64 * 108 + 64 * 4
    assert count(nn.Conv2d(3, 4, 3, padding=1, bias=False), 1, 3, 8, 8) == 64 * 108
    # stride 2: 4x4 output positions
    assert count(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), 1, 3, 8, 8) == 16 * 108


def test_grouped_conv_counts_per_group():
    # depthwise 3x3 on 6 channels: per position 9 * 6 * (6 // 6) = 54, the true MACs
    assert count(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), 1, 6, 5, 5) == 25 * 54


def test_batchnorm_and_layernorm_count_two_per_element_with_affine():
    assert count(nn.BatchNorm2d(4), 1, 4, 5, 5) == 2 * 100
    assert count(nn.BatchNorm2d(4, affine=False), 1, 4, 5, 5) == 100
    assert count(nn.LayerNorm(6), 1, 10, 6) == 2 * 60
    assert count(nn.LayerNorm(6, elementwise_affine=False), 1, 10, 6) == 60
    assert count(nn.GroupNorm(2, 4), 1, 4, 3, 3) == 2 * 36
    assert count(nn.InstanceNorm2d(4), 1, 4, 3, 3) == 36  # affine=False by default


def test_relu_counts_elements_gelu_and_functional_ops_count_nothing():
    assert count(nn.ReLU(), 1, 4, 5, 5) == 100
    assert count(nn.ReLU6(), 1, 4, 5, 5) == 100
    assert count(nn.GELU(), 1, 4, 5, 5) == 0
    assert count(nn.SiLU(), 1, 4, 5, 5) == 0
    assert count(nn.Softmax(-1), 1, 4, 5, 5) == 0

    class Functional(nn.Module):
        def forward(self, x):
            y = nn.functional.relu(x) @ x.transpose(-1, -2)
            return nn.functional.interpolate(y, scale_factor=2.0)

    assert count(Functional(), 1, 4, 5, 5) == 0


def test_linear_counts_input_elements_times_outputs_without_bias():
    assert count(nn.Linear(6, 10), 1, 6) == 60
    assert count(nn.Linear(6, 10, bias=False), 1, 6) == 60
    assert count(nn.Linear(6, 10), 1, 7, 6) == 7 * 6 * 10  # tokens: every input element times out_features


def test_pooling_counts_input_elements():
    assert count(nn.MaxPool2d(2), 1, 3, 8, 8) == 192
    assert count(nn.MaxPool2d(3, stride=2, padding=1), 1, 3, 8, 8) == 192
    assert count(nn.AdaptiveAvgPool2d(1), 1, 3, 8, 8) == 192


def test_upsample_counts_output_elements_of_the_first_image():
    assert count(nn.Upsample(scale_factor=2.0), 1, 3, 4, 4) == 3 * 8 * 8


def test_transposed_conv_counts_per_input_pixel_and_keeps_mmcvs_bias_term():
    # 2x2 stride-2: 3x5 input -> 6x10 output; MACs 15 x 2*2*4*5; mmcv's bias term is out * H_out * H_out
    deconv = nn.ConvTranspose2d(4, 5, 2, stride=2)
    assert count(deconv, 1, 4, 3, 5) == 15 * 80 + 5 * 6 * 6
    assert count(nn.ConvTranspose2d(4, 5, 2, stride=2, bias=False), 1, 4, 3, 5) == 15 * 80


def test_only_exact_types_count_and_every_call_counts():
    class MyConv(nn.Conv2d):
        pass

    assert count(MyConv(3, 4, 1), 1, 3, 2, 2) == 0  # mmcv matches type(module) exactly

    relu = nn.ReLU()
    twice = nn.Sequential(relu, relu)
    assert count(twice, 1, 2, 2, 2) == 16


def test_counts_are_per_image_and_leave_the_module_as_found():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    model.train()
    one = mmcv_style_counts(model, torch.zeros(1, 3, 4, 4))
    assert one == mmcv_style_counts(model, torch.zeros(3, 3, 4, 4))
    assert one["conv"] == 16 * 12 + 16 * 4 and one["norm"] == 128 and one["activation"] == 64
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())


def test_trainable_params_leave_out_frozen_tensors():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert trainable_params(model) == 8


# ---------------------------------------------------------------- peers

def test_pvt_s_is_missing_not_substituted():
    from cmt_gen.detection.peers import peer_body

    with pytest.raises(CmtGenError, match="PVT v2"):
        peer_body("PVT-S", [1, 2, 3], 1280, 800)


@pytest.mark.parametrize(("backbone", "detector", "printed", "frozen"), [
    ("ResNet-101", "RetinaNet", "56.7M", 225_344),
    ("ResNet-101", "Mask R-CNN", "63.2M", 225_344),
    ("Swin-T", "RetinaNet", "38.5M", 0),
    ("Swin-T", "Mask R-CNN", "47.8M", 0),
])
def test_peer_parameters_match_the_tables(backbone, detector, printed, frozen):
    """Within 1% counting every tensor; mmcv's count (trainable: mmdetection freezes ResNet's stem and first stage)
    rounds to the printed figure."""
    from cmt_gen.detection.peers import peer_detector
    from cmt_gen.spec.quantity import parse_quantity

    model, _ = peer_detector(backbone, detector, 1280, 800)
    total, trainable = sum(p.numel() for p in model.parameters()), trainable_params(model)
    assert abs(total - parse_quantity(printed)) <= 0.01 * parse_quantity(printed)
    assert total - trainable == frozen
    lo, hi = printed_interval(printed)
    assert lo <= trainable <= hi


def test_mmdetections_relu_modules_differ_by_a_fixed_count():
    from cmt_gen.detection.peers import detector_spec

    # RPN: 256 x (320*200 + 160*100 + 80*50 + 40*25 + 20*13) fewer; box fcs 2 x 1024 x 1000 and the mask
    # head's ReLU after its transposed conv 256 x 28 x 28 x 100 more
    assert mmdet_relu_delta(detector_spec("Mask R-CNN", 1280, 800)) == -256 * 85_260 + 2_048_000 + 20_070_400
    assert mmdet_relu_delta(detector_spec("RetinaNet", 1280, 800)) == 0


def test_orientation_changes_no_count():
    """mmdetection counts H=1280, W=800; the spec's default is H=800, W=1280: every layer sees the same sizes
    transposed. Checked small here, on a RetinaNet (RoI heads do not see the image size); the benchmark's
    --transposed checks every row at 1280x800."""
    from cmt_gen.detection.build import counting_forward, counting_input
    from cmt_gen.detection.peers import peer_detector

    counts = []
    for h, w in ((320, 192), (192, 320)):
        model, spec = peer_detector("ResNet-101", "RetinaNet", h, w)
        counts.append(mmcv_style_counts(counting_forward(model, spec), counting_input(spec)))
    assert counts[0] == counts[1]


# ---------------------------------------------------------------- the printed FLOPs (1280x800)

@pytest.mark.slow
@pytest.mark.parametrize(("detector", "printed"), [("RetinaNet", "315B"), ("Mask R-CNN", "336B")])
def test_mmcv_convention_reproduces_resnet101_flops(detector, printed):
    """mmcv's hook count rounds to the printed figure; the MACs alone (fvcore's conv + linear) do not: the printed
    figure also holds conv bias adds, BatchNorm (two per element), ReLU and max-pool inputs."""
    from cmt_gen.detection.conventions import convention_row

    row = convention_row("ResNet-101", detector)
    assert (row.height, row.width) == (1280, 800)
    lo, hi = printed_interval(printed)
    assert lo <= row.mmcv <= hi
    assert lo <= row.mmcv + row.mmdet_relu_delta <= hi
    assert row.attention_macs == 0
    assert not lo <= row.macs <= hi
    assert row.matches() == ["trainable_params", "mmcv"]


@pytest.mark.slow
@pytest.mark.parametrize(("detector", "printed"), [("RetinaNet", "231B"), ("Mask R-CNN", "249B")])
def test_mmcv_convention_reproduces_cmt_s_flops(detector, printed):
    """CMT-S's printed FLOPs are mmcv's count too: no attention matmuls, but bias adds, norms and ReLUs."""
    from cmt_gen.detection.conventions import convention_row

    row = convention_row("CMT-S", detector, fvcore=False)
    lo, hi = printed_interval(printed)
    assert lo <= row.mmcv <= hi
    assert lo <= row.mmcv + row.mmdet_relu_delta <= hi


# ---------------------------------------------------------------- the analytic conventions (what `check` prints)

@pytest.mark.parametrize(("kind", "backbone_changes", "changes"), [
    ("retinanet", {}, {}),
    ("retinanet", {}, {"retina_head": {"stacked_convs": 0}, "fpn": {"extra_source": "output", "extra_levels": 3}}),
    ("mask_rcnn", {}, {}),
    ("faster_rcnn", {"block": {"reduction_kind": "avgpool", "lpu": False}}, {"rpn": {"convs": 2}}),
    ("mask_rcnn", {"block": {"reduction_kind": "conv_ln", "position_bias": "table"}},
     {"mask_head": {"convs": 0, "proposals": 8}, "box_head": {"fcs": 3, "proposals": 40}}),
])
def test_analytic_hook_count_equals_mmcvs_hooks_on_the_built_detector(kind, backbone_changes, changes):
    """`cost.hook_convention` (torch-free, what `check` prints) == mmcv's rules run on the built model, plus the
    ReLU modules mmdetection has where torchvision calls F.relu (and back)."""
    from conftest import tiny_spec_dict

    from cmt_gen.cost.hook_convention import detector_hook_count
    from cmt_gen.detection.build import build_detector, counting_forward, counting_input
    from cmt_gen.spec.detector_loading import load_detector_spec

    data = {"name": "tiny", "kind": kind, "backbone": tiny_spec_dict(**backbone_changes),
            "input": {"height": 192, "width": 256}}
    if kind != "retinanet":
        data["box_head"] = {"proposals": 40}
    if kind == "mask_rcnn":
        data["mask_head"] = {"proposals": 8}
    spec = load_detector_spec({**data, **changes})
    model = build_detector(spec)
    hooked = mmcv_style_count(counting_forward(model, spec), counting_input(spec))
    assert detector_hook_count(spec) == hooked + mmdet_relu_delta(spec)


def test_analytic_resnet_trunk_equals_torchvisions_resnet101():
    """The torch-free ResNet-101 of `cost.peers78`: parameters, frozen parameters, MACs and mmcv's count."""
    from cmt_gen.check.measured import MAC_OPERATORS, flop_count_analysis
    from cmt_gen.cost.peers78 import resnet_trunk
    from cmt_gen.detection.peers import resnet101_body

    body, channels = resnet101_body([0, 1, 2, 3])
    trunk = resnet_trunk(224, 160)
    x = torch.zeros(1, 3, 224, 160)
    assert sum(p.numel() for p in body.parameters()) == trunk.params
    assert sum(p.numel() for p in body.parameters()) - trainable_params(body) == trunk.frozen_params
    assert channels == trunk.channels
    assert [tuple(m.shape[-2:]) for m in body.eval()(x).values()] == trunk.maps
    with torch.no_grad():
        ops = flop_count_analysis(body, (x,)).by_operator()
    assert sum(v for k, v in ops.items() if k in MAC_OPERATORS) == trunk.macs
    assert mmcv_style_count(body, x) == trunk.macs + trunk.hook_extras


def test_check_prints_the_convention_validation_torch_free():
    """The ResNet-101 rows that `check` prints, analytic: only mmcv's conventions reproduce both."""
    from cmt_gen.check.detector import convention_rows

    rows = convention_rows()
    assert [r.row.flops for r in rows] == ["315B", "336B"]
    for r in rows:
        assert r.matches() == {"params (all)": False, "params (trainable, mmcv)": True,
                               "MACs (conv, linear)": False, "FLOPs (mmcv hooks)": True}
