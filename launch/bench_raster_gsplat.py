"""The gsplat side of ``launch/bench_raster.py --gsplat``: renders its scene files through
``gsplat.rasterization`` (PyTorch, CUDA) in a process of its own, so that PyTorch and JAX do not
share GPU memory. Imports no JAX.

``python -m launch.bench_raster_gsplat --out=DIR [--prebuilt=gsplat_cuda.so] SCENE.npz ...``

A scene file holds activated parameters ``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z),
``scales [N, 3]``, ``opacities [N]``, ``colors [N, 3]``, cameras ``viewmats [C, 4, 4]``
(world->camera, OpenCV) and ``Ks [C, 3, 3]``, ``height``, ``width``, ``background [3]``,
``weights [C, H, W, 4]`` (the loss ``sum(images * w[..., :3]) + sum(alpha * w[..., 3:])``),
``near``, ``far`` and ``repeats``. For each, ``DIR/<name>.gsplat.npz`` gets ``images [C, H, W, 3]``,
``alpha [C, H, W, 1]``, ``grad_<parameter>`` for the five parameters, and the medians ``fwd_ms``,
``fwd_bwd_ms`` and ``peak_mib`` (PyTorch's peak allocation in a forward+backward).
``--prebuilt`` loads a gsplat CUDA extension built by an earlier run instead of JIT-building it.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time

PARAMETERS = ("means", "quats", "scales", "opacities", "colors")


def load_gsplat(prebuilt: str | None):
    """Imports gsplat; with ``prebuilt`` (a ``gsplat_cuda.so`` from an earlier JIT build) that
    extension stands in for the one gsplat would build."""
    import torch  # noqa: F401  (the extension links against the libraries torch loads)

    if prebuilt and pathlib.Path(prebuilt).is_file():
        spec = importlib.util.spec_from_file_location("gsplat_cuda", prebuilt)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["gsplat.csrc"] = module  # gsplat's backend tries `from gsplat import csrc` first
        print(f"gsplat: using the prebuilt extension {prebuilt}", flush=True)
    import gsplat

    return gsplat


def _median_ms(fn, repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_scene(gsplat, path: pathlib.Path, out_dir: pathlib.Path) -> None:
    import numpy as np
    import torch

    scene = np.load(path)
    cuda = lambda name: torch.as_tensor(scene[name], device="cuda")
    params = {name: cuda(name).requires_grad_(True) for name in PARAMETERS}
    viewmats, Ks, weights = cuda("viewmats"), cuda("Ks"), cuda("weights")
    height, width, repeats = int(scene["height"]), int(scene["width"]), int(scene["repeats"])
    backgrounds = cuda("background").expand(viewmats.shape[0], 3).contiguous()

    def render():
        return gsplat.rasterization(
            **params,
            viewmats=viewmats,
            Ks=Ks,
            width=width,
            height=height,
            near_plane=float(scene["near"]),
            far_plane=float(scene["far"]),
            backgrounds=backgrounds,
            packed=False,  # faster than packed on these scenes (DESIGN.md section 4)
        )

    def forward():
        with torch.no_grad():
            return render()

    def forward_backward():
        images, alpha, _ = render()
        loss = torch.sum(images * weights[..., :3]) + torch.sum(alpha * weights[..., 3:])
        return torch.autograd.grad(loss, list(params.values()))

    fwd_ms = _median_ms(forward, repeats)
    fwd_bwd_ms = _median_ms(forward_backward, repeats)
    torch.cuda.reset_peak_memory_stats()
    grads = forward_backward()
    torch.cuda.synchronize()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
    images, alpha, _ = forward()
    as_numpy = lambda t: t.detach().float().cpu().numpy()
    np.savez(
        out_dir / f"{path.stem}.gsplat.npz",
        images=as_numpy(images),
        alpha=as_numpy(alpha),
        fwd_ms=fwd_ms,
        fwd_bwd_ms=fwd_bwd_ms,
        peak_mib=peak_mib,
        **{f"grad_{name}": as_numpy(g) for name, g in zip(PARAMETERS, grads)},
    )
    print(f"gsplat {path.stem}: fwd {fwd_ms:.3f} ms, fwd+bwd {fwd_bwd_ms:.3f} ms, peak {peak_mib:.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenes", nargs="+", type=pathlib.Path, help="scene .npz files written by bench_raster")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the results")
    parser.add_argument("--prebuilt", default=None, help="a gsplat_cuda.so from an earlier JIT build")
    args = parser.parse_args(argv)
    for path in args.scenes:
        if not path.is_file():
            raise SystemExit(f"error: no scene file {path}")
    gsplat = load_gsplat(args.prebuilt)
    import torch

    print(f"gsplat {gsplat.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for path in args.scenes:
        run_scene(gsplat, path, args.out)


if __name__ == "__main__":
    main()
