"""Attention scores in rows that are not whole 32-byte vectors (`unaligned_scores`, why: `benchmarks/NOTES.md`),
and calibration files from before that feature, which predict as they were fitted."""

from __future__ import annotations

import pytest
from test_latency import BATCH, TRUE, fake_timer

from cmt_gen.latency.calibrate import calibrate
from cmt_gen.latency.calibration_file import CalibrationError, calibration_from_dict
from cmt_gen.latency.features import EARLIER_FEATURES, FEATURES, PartShape, select, spec_parts
from cmt_gen.latency.fit import predict
from cmt_gen.latency.predict import predict_latency
from cmt_gen.spec.loading import load_spec

UNALIGNED = FEATURES["block"].index("unaligned_scores")
SCORES = FEATURES["block"].index("attention_scores")


@pytest.mark.parametrize("side, reduction, keys", [(88, 8, 121), (72, 8, 81), (40, 4, 100), (14, 2, 49),
                                                   (96, 8, 144), (64, 8, 64), (32, 4, 64), (8, 1, 64)])
def test_scores_are_unaligned_when_a_row_of_keys_is_not_whole_vectors(side, reduction, keys):
    features = PartShape("block", side, side, 64, 64, heads=2, reduction=reduction, hidden=256).features(BATCH)
    assert features[SCORES] == BATCH * 2 * side * side * keys
    assert features[UNALIGNED] == (features[SCORES] if keys % 8 else 0)


def _file_from_before_unaligned_scores() -> dict:
    """A calibration file as written before the feature: the block model without its last coefficient."""
    data = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, timer=fake_timer).model_dump(
        mode="json")
    block = data["parts"]["block"]
    block["features"], block["coefficients"] = block["features"][:-1], block["coefficients"][:-1]
    assert tuple(block["features"]) == EARLIER_FEATURES["block"][0]
    return data


def test_files_from_before_predict_with_the_features_they_were_fitted_on():
    old = calibration_from_dict(_file_from_before_unaligned_scores())
    spec = load_spec("cmt_xs", ["resolution=352"])  # 11x11 keys in every stage: every score unaligned
    expected = 0.0
    for part, calls in spec_parts(spec):
        full = part.features(BATCH, old.channel_block, old.padded_kinds)
        model = old.parts[part.kind]
        kept = full[:-1] if part.kind == "block" else full  # the file's own eight block features
        expected += calls * old.network_factor * predict(model.coefficients, kept)
    assert predict_latency(spec, old).seconds == pytest.approx(expected, rel=1e-12)
    assert select((1.0, 2.0, 3.0), "stem", FEATURES["stem"]) == (1.0, 2.0, 3.0)


def test_a_file_with_other_block_features_is_refused_naming_both_lists():
    data = _file_from_before_unaligned_scores()
    data["parts"]["block"]["features"][1] = "gemm_macs"
    with pytest.raises(CalibrationError, match=r"parts.block.features must be \[.*'unaligned_scores'\] \(or, in "
                                               r"files from before, \[.*'hidden_elements'\]\), got"):
        calibration_from_dict(data)


def test_a_device_that_pays_for_unaligned_rows_is_recovered_exactly():
    cal = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, timer=fake_timer)
    assert cal.parts["block"].coefficients == pytest.approx(TRUE["block"], rel=1e-6, abs=1e-18)
    assert cal.parts["block"].coefficients[UNALIGNED] > 0
