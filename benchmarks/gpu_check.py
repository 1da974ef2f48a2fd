"""GPU inputs give the CPU's bundles, at full size, on a real GPU; with timings.

Run:  python benchmarks/gpu_check.py                 (2048 x 65536, needs a CUDA GPU)
      NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_check.py --n 16 --d 40 --threshold-d 24
                                                     (dry run under Numba's simulator)

For every dtype (float32, float64, float16; bfloat16 through torch) and every GPU framework
present (CuPy, torch; numba device arrays always), ``find_bundles`` on the GPU array must return
the CPU result on the same values: identical bundle ids, entropy and counts.  The raw
fingerprints of the two backends must be identical too.  Half of the rows duplicate the other
half in a shuffled order.  Threshold mode is checked the same way on a narrower array, and the
fingerprint kernel's bandwidth is compared with a device-to-device copy
(``bench_bundles.gpu_bandwidth``).  Exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import platform
import sys
import time

import ml_dtypes
import numpy as np

import bundlelab
from bundlelab._arrays import as_rows
from bundlelab.kernels import Transform, get_kernel_backend
from bundlelab.kernels._formats import FORMATS

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
FIELDS = ("n_bundles", "n_conflicting", "largest_bundle", "entropy")
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def frameworks(simulator: bool):
    """(name, to_device(host array) -> GPU array, synchronize) of the GPU frameworks here."""
    from numba import cuda

    found = []
    if not simulator:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                found.append(("cupy", cupy.asarray, cupy.cuda.Device().synchronize))
        except Exception as exc:  # noqa: BLE001
            print(f"cupy not usable: {exc}")
        try:
            import torch

            if torch.cuda.is_available():
                def to_torch(host):
                    if host.dtype == ml_dtypes.bfloat16:  # exact: bfloat16 is float32's top half
                        return torch.from_numpy(host.astype(np.float32)).cuda().to(torch.bfloat16)
                    return torch.from_numpy(np.ascontiguousarray(host)).cuda()

                found.append(("torch", to_torch, torch.cuda.synchronize))
            else:
                print("torch: no CUDA device")
        except Exception as exc:  # noqa: BLE001
            print(f"torch not usable: {exc}")
    found.append(("numba", cuda.to_device, cuda.synchronize))
    return found


def supports(framework: str, dtype: str) -> bool:
    if dtype == "bfloat16":
        return framework == "torch"  # CuPy and numba device arrays have no bfloat16
    return True


def activations(rng, n: int, d: int, dtype: str) -> np.ndarray:
    """Random rows; rows n/2.. repeat rows 0..n/2 in a shuffled order; one near-duplicate."""
    half = n // 2
    a = rng.standard_normal((n, d), dtype=np.float32).astype(DTYPES[dtype])
    a[half:2 * half] = a[rng.permutation(half)]
    a[-1, d // 2] = np.nextafter(a[0, d // 2], np.float32(np.inf)).astype(a.dtype)  # nearly row 0
    return a


def median_seconds(fn, sync, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def kernel_ms(fn, repeat: int = 10) -> float:
    """Median device time of ``fn`` in ms by CUDA events (after one warm-up call)."""
    from numba import cuda

    fn()
    cuda.synchronize()
    start, stop = cuda.event(), cuda.event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cuda.event_elapsed_time(start, stop))
    return float(np.median(times))


def same(cpu, gpu) -> bool:
    return gpu.bundle_ids.tolist() == cpu.bundle_ids.tolist() and all(
        getattr(gpu, f) == getattr(cpu, f) for f in FIELDS
    )


def resolution_checks(args, rng, table, simulator: bool) -> None:
    labels = rng.integers(0, 10, args.n)
    for dtype in DTYPES:
        # w = 1 collapses every narrow row to 1.0 (the step is far below float16's resolution
        # near 1), so the narrow formats use w = 0: t = -(a * alpha) * invb stays distinct
        options = dict(learning_rate=1e-3, batch_size=64,
                       weight_amplitude=1.0 if dtype in ("float32", "float64") else 0.0)
        a = activations(rng, args.n, args.d, dtype)
        bundlelab.find_bundles(a[:8], labels[:8], device="cpu", **options)  # compile
        start = time.perf_counter()
        cpu = bundlelab.find_bundles(a, labels, device="cpu", **options)
        t_cpu = time.perf_counter() - start
        print(f"{dtype} {args.n}x{args.d} w={options['weight_amplitude']}: CPU {cpu.n_bundles} "
              f"bundles, {t_cpu:.3f} s", flush=True)
        check(cpu.n_bundles <= args.n - args.n // 2 + 1, f"{dtype}: CPU finds the duplicates")
        fmt = FORMATS[dtype]
        transform = Transform.for_format(fmt, options["weight_amplitude"], 1e-3, 64)
        cpu_rows = as_rows(a, device="cpu")
        cpu_fp, cpu_bad = get_kernel_backend("cpu").fingerprints(cpu_rows.data, fmt, transform)
        for name, to_device, sync in frameworks(simulator):
            if not supports(name, dtype):
                continue
            try:
                g = to_device(a)
                sync()
                start = time.perf_counter()
                gpu = bundlelab.find_bundles(g, labels, device="cuda", **options)
                sync()
                t_first = time.perf_counter() - start
                t_gpu = median_seconds(
                    lambda: bundlelab.find_bundles(g, labels, device="cuda", **options), sync,
                    args.repeat,
                )
                auto = bundlelab.find_bundles(g, labels, **options)  # 'auto' follows the array
                check(same(cpu, gpu) and same(cpu, auto),
                      f"{dtype} {name}: bundle ids, entropy, counts == CPU "
                      f"({gpu.n_bundles} bundles; GPU {t_gpu * 1e3:.1f} ms, first call "
                      f"{t_first:.2f} s)")
                gpu_rows = as_rows(g, device="cuda")
                backend = get_kernel_backend("cuda")
                fp, bad = backend.fingerprints(gpu_rows.data, fmt, transform)
                check(np.array_equal(fp, cpu_fp) and np.array_equal(bad, cpu_bad),
                      f"{dtype} {name}: raw fingerprints == CPU")
                t_fp = (float("nan") if simulator else
                        kernel_ms(lambda: backend.fingerprints(gpu_rows.data, fmt, transform)))
                table.append((f"resolution {dtype}", name, f"{args.n}x{args.d}", t_cpu,
                              t_gpu, t_fp, gpu.n_bundles))
                del g, gpu_rows
            except Exception as exc:  # noqa: BLE001 - report, go on with the next case
                check(False, f"{dtype} {name}: raised {type(exc).__name__}: {exc}")


def threshold_checks(args, rng, table, simulator: bool) -> None:
    n, d = args.n, args.threshold_d
    labels = rng.integers(0, 10, n)
    for dtype, gamma in (("float32", 1e-8), ("float64", 1e-8), ("float16", 1e-6)):
        c = rng.random((n, d), dtype=np.float32)
        c[n // 2:] = c[: n // 2] + np.float32(1e-5)  # near-duplicates within gamma
        c = c.astype(DTYPES[dtype])
        options = dict(mode="threshold", gamma=gamma)
        bundlelab.find_bundles(c[:8], labels[:8], device="cpu", **options)  # compile
        start = time.perf_counter()
        cpu = bundlelab.find_bundles(c, labels, device="cpu", **options)
        t_cpu = time.perf_counter() - start
        print(f"threshold {dtype} {n}x{d} gamma={gamma}: CPU {cpu.n_bundles} bundles, "
              f"{t_cpu:.3f} s", flush=True)
        for name, to_device, sync in frameworks(simulator)[:1]:  # the first framework only
            try:
                g = to_device(c)
                bundlelab.find_bundles(g, labels, device="cuda", **options)  # compile
                t_gpu = median_seconds(
                    lambda: bundlelab.find_bundles(g, labels, device="cuda", **options), sync,
                    args.repeat,
                )
                gpu = bundlelab.find_bundles(g, labels, device="cuda", **options)
                check(same(cpu, gpu), f"threshold {dtype} {name}: bundle ids == CPU "
                      f"({gpu.n_bundles} bundles; GPU {t_gpu * 1e3:.1f} ms)")
                table.append((f"threshold {dtype}", name, f"{n}x{d}", t_cpu, t_gpu,
                              float("nan"), gpu.n_bundles))
            except Exception as exc:  # noqa: BLE001
                check(False, f"threshold {dtype} {name}: raised {type(exc).__name__}: {exc}")


def adapter_check(device: str) -> None:
    """The torch adapter on a CUDA model gives the CPU model's report.  Integer weights and
    inputs keep every activation exact on both devices (no rounding in the matrix products)."""
    import torch
    from torch import nn

    from bundlelab.adapters.torch import audit

    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randint(-2, 3, parameter.shape, generator=generator))
    x = torch.randint(-3, 4, (2048, 64), generator=generator).float()
    x[1024:] = x[torch.randperm(1024, generator=generator)]
    y = torch.randint(0, 10, (2048,), generator=generator)
    options = dict(learning_rate=0.5, batch_size=2)
    cpu = audit(model, x, y, **options)
    start = time.perf_counter()
    gpu = audit(model.to(device), x, y, **options)
    elapsed = time.perf_counter() - start
    ok = cpu.names == gpu.names and all(
        a.bundle_ids.tolist() == b.bundle_ids.tolist() and a.entropy == b.entropy
        for a, b in zip(cpu.layers, gpu.layers)
    )
    check(ok, f"torch adapter audit on {device}: {len(gpu.layers)} layers "
          f"({[r.n_bundles for r in gpu.layers]} bundles) == CPU model ({elapsed:.2f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--d", type=int, default=65536)
    parser.add_argument("--threshold-d", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["resolution", "threshold", "bandwidth", "adapter"])
    parser.add_argument("--adapter-device", default="cuda",
                        help="device of the audited torch model (cpu: a dry run of the check)")
    args = parser.parse_args()

    import numba
    from numba import config, cuda

    simulator = bool(config.ENABLE_CUDASIM)
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"numba.cuda at {pathlib.Path(cuda.__file__).parent}, bundlelab {bundlelab.__version__}, "
          f"simulator={simulator}")
    if not simulator:
        if not cuda.is_available():
            print("no CUDA device")
            return 1
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        print(f"GPU {name}, compute capability {device.compute_capability}")
    rng = np.random.default_rng(7)
    table = []
    if "resolution" not in args.skip:
        resolution_checks(args, rng, table, simulator)
    if "threshold" not in args.skip:
        threshold_checks(args, rng, table, simulator)
    if "adapter" not in args.skip and (not simulator or args.adapter_device == "cpu"):
        try:
            adapter_check(args.adapter_device)
        except Exception as exc:  # noqa: BLE001
            check(False, f"torch adapter: raised {type(exc).__name__}: {exc}")
    if "bandwidth" not in args.skip and not simulator:
        path = pathlib.Path(__file__).with_name("bench_bundles.py")
        spec = importlib.util.spec_from_file_location("bench_bundles", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        for d in sorted({4096, args.d}):
            try:
                bench.gpu_bandwidth(args.n, d, quick=False)
            except Exception as exc:  # noqa: BLE001
                check(False, f"gpu_bandwidth {args.n}x{d}: raised {type(exc).__name__}: {exc}")

    print(f"\n{'case':<22}{'array':<7}{'shape':<13}{'CPU s':>9}{'GPU ms':>10}{'fp kernel ms':>14}"
          f"{'x CPU':>8}{'bundles':>9}")
    for case, name, shape, t_cpu, t_gpu, t_fp, n_bundles in table:
        print(f"{case:<22}{name:<7}{shape:<13}{t_cpu:>9.3f}{t_gpu * 1e3:>10.2f}{t_fp:>14.3f}"
              f"{t_cpu / t_gpu:>8.1f}{n_bundles:>9}")
    print(f"\ngpu_check: {len(FAILURES)} failure(s)" + "".join(f"\n  {f}" for f in FAILURES))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
