"""Writers and loaders per export format; every writer goes through `files.atomic_output`.

All formats keep batch, height and width dynamic (height and width as multiples
of the network's total stride), so one file serves every input size.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cmt_gen.errors import CmtGenError
from cmt_gen.files import atomic_output

FORMATS = ("onnx", "torchscript", "program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "program": ".pt2"}
MAX_SIDE_BLOCKS = 128  # dynamic height / width up to 128 x the total stride (4096 px at stride 32)
# and from 2 x the total stride: traced at a size whose last map is at least 2x2, torch.export keeps
# that as a guard (size-1 dimensions are specialised), so 1x1 last maps are out of the exported range.
MIN_SIDE_BLOCKS = 2


def dynamic_shapes(stride: int) -> dict:
    from torch.export import Dim

    return {"x": {0: Dim("batch", min=1, max=4096),
                  2: stride * Dim("height_blocks", min=MIN_SIDE_BLOCKS, max=MAX_SIDE_BLOCKS),
                  3: stride * Dim("width_blocks", min=MIN_SIDE_BLOCKS, max=MAX_SIDE_BLOCKS)}}


def stride_multiples_supported() -> bool:
    """Whether this torch.export can make a dynamic size a multiple of the stride (`32 * Dim(...)`)."""
    from torch.export import Dim

    try:
        2 * Dim("probe", min=2, max=4)
    except TypeError:  # older releases have no derived dimensions
        return False
    return True


def _write_program(graph: nn.Module, example: torch.Tensor, stride: int, path: Path) -> None:
    if not stride_multiples_supported():
        raise CmtGenError(f"program export needs dynamic sizes that are multiples of the stride, which torch "
                          f"{torch.__version__}'s torch.export cannot express (newer releases can); "
                          "use --format onnx or torchscript", field="--format")
    program = torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes(stride))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    _write_bytes(path, buffer.getvalue())


def _write_torchscript(graph: nn.Module, example: torch.Tensor, stride: int, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still widely loaded
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(graph), buffer)
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    """Written from Python, so a full disk is an OSError (one clear line), not an abort inside C++."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_onnx(graph: nn.Module, example: torch.Tensor, stride: int, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise CmtGenError("ONNX export needs the onnx extra: pip install 'cmt-gen[onnx]'",
                          field="--format") from None
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        try:
            torch.onnx.export(graph, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes(stride),
                              input_names=["images"], output_names=["logits"], verbose=False)
            _inline_external_data(path)
        finally:
            _external_data_file(path).unlink(missing_ok=True)
        return
    # torch < 2.5: the TorchScript-based exporter, which traces; sizes stay symbolic through the trace
    # (the export job then checks the file at two other sizes, as for the dynamo exporter).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values read from sizes
        torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=["logits"],
                          opset_version=17, dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                                          "logits": {0: "batch"}})


# protobuf's limit on one message: a larger model cannot hold its weights inside the .onnx file.
ONNX_INLINE_LIMIT = 2 << 30


def _external_data_file(path: Path) -> Path:
    """Where the dynamo exporter puts the weights of `path` (beside it, named after it)."""
    return path.with_name(path.name + ".data")


def _inline_external_data(path: Path) -> None:
    """Move the weights the exporter wrote beside the file into it, so the .onnx is self-contained:
    its data file would be named after the temporary file and lost (or orphaned) on the rename."""
    data = _external_data_file(path)
    if not data.exists():
        return
    if path.stat().st_size + data.stat().st_size >= ONNX_INLINE_LIMIT:
        raise CmtGenError("the model's weights are over 2 GB, more than one ONNX file can hold; "
                          "use --format program or torchscript", field="--format")
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, int, Path], None]] = {
    "onnx": _write_onnx, "torchscript": _write_torchscript, "program": _write_program,
}


def write_export(fmt: str, graph: nn.Module, example: torch.Tensor, stride: int, path: Path) -> None:
    """Write `graph` in `fmt` to `path` atomically (a finished file or none)."""
    with atomic_output(path) as tmp:
        WRITERS[fmt](graph, example, stride, tmp)


def load_runner(fmt: str, path: Path, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reload a written file into a function images -> logits (onnxruntime for ONNX)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise CmtGenError("checking an ONNX export needs onnxruntime: pip install 'cmt-gen[onnx]'",
                              field="--format") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    else:
        module = torch.export.load(str(path)).module()
    return lambda x: module(x)
