"""timm's own scripts on cmt models, with and without `--reparam` (a check run by hand).

    python benchmarks/timm_scripts_check.py /path/to/pytorch-image-models [--model cmt_ti]

Runs `inference.py`, `validate.py`, `benchmark.py`, `onnx_export.py` and
`onnx_validate.py` (they need pandas and onnxruntime) from a checkout of timm's repository (not shipped with the
timm package, so no test can depend on them), each in a child process that
first runs `import cmt_gen.timm` to register the models. The model gets
random weights with non-trivial BatchNorm statistics (saved as a checkpoint
the scripts load), and the data set is random images labelled with the model's
own predictions from `inference.py`, so validation reads 100% top-1 when the
network is unchanged: `--reparam` must read exactly the same, on PyTorch and
on onnxruntime. Prints one line per run and exits 1 on any failure or mismatch.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BOOT = ("import cmt_gen.timm, runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_script(repo: Path, script: str, args: list[str], log: Path) -> str:
    command = [sys.executable, "-c", BOOT, str(repo / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{script} {' '.join(args)} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout + done.stderr


def make_images(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (200, 232, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def make_checkpoint(model_name: str, classes: int, images: list[Path], folder: Path) -> tuple[Path, dict]:
    """Random weights with non-trivial BN statistics; the classifier fitted so that image i is
    predicted as class i mod `classes` (every class folder of the data set then exists)."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    import cmt_gen.timm  # noqa: F401 - registers the models

    model = timm.create_model(model_name, num_classes=classes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        model.eval()
        transform = create_transform(**resolve_data_config({}, model=model))
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        mean = features.mean(0)
        targets = torch.nn.functional.one_hot(torch.arange(len(images)) % classes, classes).float() * 10 - 5
        weight = torch.linalg.lstsq(features - mean, targets).solution.T
        model.head.fc.weight.copy_(weight)
        model.head.fc.bias.copy_(-(mean @ weight.T))
    path = folder / "checkpoint.pth"
    torch.save(model.state_dict(), path)
    return path, dict(model.pretrained_cfg)


def label_by_prediction(predictions: Path, images: list[Path], dataset: Path) -> None:
    """An ImageFolder whose class folders hold each image under the class the model predicted."""
    by_name = {p.name: p for p in images}
    with predictions.open() as f:
        for row in csv.DictReader(f):
            name = Path(row["filename"]).name
            label = int(row["index"].strip("[] "))
            target = dataset / f"{label:04d}"  # zero-padded: the sorted folder order is the class order
            target.mkdir(parents=True, exist_ok=True)
            (target / name).symlink_to(by_name[name])


def top1(output: str, pattern: str) -> float:
    found = re.findall(pattern, output)
    if not found:
        raise RuntimeError(f"no top-1 in the output (pattern {pattern!r})")
    return float(found[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("timm_repo", type=Path, help="a checkout of huggingface/pytorch-image-models")
    parser.add_argument("--model", default="cmt_ti")
    parser.add_argument("--images", type=int, default=24)
    args = parser.parse_args()
    repo = args.timm_repo
    classes = 4  # every class folder must exist for ImageFolder: few classes, all of them predicted
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = make_images(work / "images", args.images)
        checkpoint, cfg = make_checkpoint(args.model, classes, images, work)
        size = str(cfg["input_size"][-1])
        common = ["--model", args.model, "--num-classes", str(classes), "--checkpoint", str(checkpoint)]
        cpu = ["--device", "cpu", "-b", "8", "-j", "0"]
        run_script(repo, "inference.py", [str(work / "images"), *common, *cpu, "--results-dir", str(work),
                                          "--results-file", "predictions", "--results-format", "csv",
                                          "--topk", "1", "--include-index"], work / "inference.log")
        dataset = work / "dataset"
        label_by_prediction(work / "predictions.csv", images, dataset)
        for classes_seen in sorted(p.name for p in dataset.iterdir()):
            print(f"class {classes_seen}: {len(list((dataset / classes_seen).iterdir()))} images")
        readings: dict[str, dict[str, float]] = {}
        for reparam in ([], ["--reparam"]):
            tag = "reparam" if reparam else "plain"
            try:
                out = run_script(repo, "validate.py", [str(dataset), *common, *cpu, *reparam],
                                 work / f"validate-{tag}.log")
                readings.setdefault("validate.py", {})[tag] = top1(out, r'"top1": ([0-9.]+)')
                run_script(repo, "benchmark.py", [*common[:4], "--device", "cpu", "-b", "2", "--bench", "inference",
                                                  "--num-bench-iter", "5", "--num-warm-iter", "1", *reparam],
                           work / f"benchmark-{tag}.log")
                print(f"benchmark.py {tag}: ran")
                onnx = work / f"{tag}.onnx"
                run_script(repo, "onnx_export.py", [str(onnx), *common, *reparam], work / f"export-{tag}.log")
                out = run_script(repo, "onnx_validate.py", [str(dataset), "--onnx-input", str(onnx), "-b", "8",
                                                            "-j", "0", "--img-size", size,
                                                            "--crop-pct", str(cfg["crop_pct"]),
                                                            "--interpolation", cfg["interpolation"]],
                                 work / f"onnx-validate-{tag}.log")
                readings.setdefault("onnx_validate.py", {})[tag] = top1(out, r"Prec@1 ([0-9.]+)")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failures.append(str(exc))
                print(f"FAILED ({tag}): {exc}")
        for script, tops in readings.items():
            same = len(tops) == 2 and tops["plain"] == tops["reparam"]
            print(f"{script}: top-1 {tops.get('plain')} without --reparam, {tops.get('reparam')} with: "
                  f"{'same' if same else 'DIFFERENT'}")
            if not same:
                failures.append(f"{script}: top-1 differs")
    print("all timm scripts ran; --reparam gives the same top-1" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
