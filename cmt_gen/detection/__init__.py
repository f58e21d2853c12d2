"""Layer 6, detectors around a backbone (torch + torchvision): RetinaNet, Faster and Mask R-CNN from a `DetectorSpec`.

`build.build_detector` puts a CMT backbone under an FPN and the spec's heads
(mmdetection's 1x structure, so parameters equal `cost.detector`'s analytic
count); `build.assemble_detector` does the same around any backbone.
torchvision is the `[detection]` extra and is imported only when a detector is built.
"""
