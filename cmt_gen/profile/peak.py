"""The device's dense-matmul rate, measured in the same run, as the yardstick for achieved MAC/s.

A square matmul grows until one call is long enough to be efficient, then the
best of a few timed windows is kept: a practical peak of this device, this
dtype and this thread count, not a datasheet figure. On CPU the product also
runs through oneDNN with a pre-packed operand, as the deploy form's linears do
(`deploy.onednn`), and the faster of the two is the peak: on some CPUs oneDNN
runs well above the sgemm behind `a @ b`, and against `a @ b` alone the deploy
form read above 100% of peak (`benchmarks/NOTES.md`, "Matmul peak on CPU").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmt_gen.devices import KINDS, device_for
from cmt_gen.profile.timing import Clock


@dataclass(frozen=True)
class MatmulPeak:
    device: str
    dtype: str
    size: int  # n of the n x n @ n x n product
    macs_per_s: float
    windows: int
    kernel: str = "matmul"  # which product reached the peak: "matmul" (a @ b) or "oneDNN"

    def as_dict(self) -> dict:
        return asdict(self)


# Sizes start where kernels are efficient and grow while one product is quick, up to the cap: each device's
# `matmul_sizes`, by kind, in tables a quick run or a test can swap an entry of.
START_SIZE = {kind: device_for(kind).matmul_sizes.start for kind in KINDS}
EFFICIENT_CALL_S = {kind: device_for(kind).matmul_sizes.efficient_call_s for kind in KINDS}
MAX_SIZE = {kind: device_for(kind).matmul_sizes.largest for kind in KINDS}


def measure_matmul_peak(device: str, dtype_name: str = "float32", *, window_s: float = 0.25,
                        windows: int = 5) -> MatmulPeak:
    """Best MAC/s of n x n matmuls in `dtype_name` on `device` over a few timed windows.

    The best window, not the median: the peak is what the device can do, and
    other load on the machine (or a clock still ramping up) only ever slows a
    window down. About two seconds on a CPU.
    """
    import torch

    kind = device.split(":")[0]
    clock = Clock(device)
    dtype = getattr(torch, dtype_name)
    n = START_SIZE.get(kind, 1024)
    with torch.inference_mode():
        while True:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            clock.time(lambda a=a, b=b: a @ b, 1)  # first call pays for kernel selection
            seconds = clock.time(lambda a=a, b=b: a @ b, 1)
            if seconds >= EFFICIENT_CALL_S.get(kind, 0.01) or n * 2 > MAX_SIZE.get(kind, 4096):
                break
            n *= 2
        calls = max(1, int(window_s / max(seconds, 1e-9)))
        best, best_kernel = 0.0, "matmul"
        for kernel, product in _products(kind, a, b).items():
            product()  # first call pays for kernel selection
            for _ in range(windows):
                rate = calls * n ** 3 / clock.time(product, calls)
                if rate > best:
                    best, best_kernel = rate, kernel
    return MatmulPeak(device=device, dtype=dtype_name, size=n, macs_per_s=best, windows=windows, kernel=best_kernel)


def _products(kind: str, a, b) -> dict:
    """The ways torch can multiply `a @ b` here: the default, and on the host CPU oneDNN with `b` pre-packed
    where torch has that op and it passes its self-check for this dtype (`deploy.onednn`)."""

    from cmt_gen.deploy import onednn

    products = {"matmul": lambda: a @ b}
    if device_for(kind).host and onednn._HAVE_ONEDNN and a.dtype in onednn._DTYPES and onednn.linear_case_ok(a.dtype):
        try:
            packed = onednn.pack_linear_weight(b.t().contiguous(), a.shape[0])
        except RuntimeError as exc:
            onednn.give_up(onednn.linear_case(a.dtype), f"raised packing a {tuple(b.shape)} operand: {exc}")
            return products
        products["oneDNN"] = lambda: onednn.linear_op(a, packed, None, "none")
    return products
