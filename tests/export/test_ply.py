"""The .ply writer, read back by an independent reader (plyfile)."""

import numpy as np
import pytest

from avat3r_jax.export.ply import write_ply
from avat3r_jax.gaussians import SH_C0, Gaussians

plyfile = pytest.importorskip("plyfile")


def random_gaussians(rng, count: int, num_sh_rest: int) -> Gaussians:
    return Gaussians.create(
        means=rng.normal(size=(count, 3)).astype(np.float32),
        log_scales=rng.uniform(-8, -3, (count, 3)).astype(np.float32),
        quaternions=rng.normal(size=(count, 4)).astype(np.float32),
        opacity_logits=rng.normal(size=(count,)).astype(np.float32),
        colors=rng.uniform(0, 1, (count, 3)).astype(np.float32),
        sh_rest=rng.normal(scale=0.1, size=(count, num_sh_rest, 3)).astype(np.float32),
    )


@pytest.mark.parametrize("num_sh_rest", [0, 8])
def test_ply_has_the_inria_layout_and_inverts_to_the_gaussians(tmp_path, rng, num_sh_rest):
    gaussians = random_gaussians(rng, 57, num_sh_rest)
    path = write_ply(tmp_path / "avatar.ply", gaussians)

    ply = plyfile.PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    expected_names = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * num_sh_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert [p.name for p in vertex.properties] == expected_names
    assert all(np.dtype(p.val_dtype) == np.float32 for p in vertex.properties)
    assert vertex.count == 57

    column = lambda *names: np.stack([np.asarray(vertex[n], np.float64) for n in names], -1)
    np.testing.assert_allclose(column("x", "y", "z"), gaussians.means, rtol=1e-6)
    np.testing.assert_array_equal(column("nx", "ny", "nz"), 0.0)
    # 3DGS colour of degree 0: SH_C0 * f_dc + 0.5.
    np.testing.assert_allclose(SH_C0 * column("f_dc_0", "f_dc_1", "f_dc_2") + 0.5, gaussians.colors, atol=1e-6)
    # INRIA stores features_rest as [N, 3, K-1] flattened: f_rest index = channel * (K-1) + coefficient.
    for coefficient in range(num_sh_rest):
        for channel in range(3):
            np.testing.assert_allclose(
                vertex[f"f_rest_{channel * num_sh_rest + coefficient}"], gaussians.sh_rest[:, coefficient, channel], rtol=1e-6
            )
    np.testing.assert_allclose(vertex["opacity"], gaussians.opacity_logits, rtol=1e-6)
    np.testing.assert_allclose(np.exp(column("scale_0", "scale_1", "scale_2")), np.exp(gaussians.log_scales), rtol=1e-5)
    q = np.asarray(gaussians.quaternions, np.float64)
    np.testing.assert_allclose(column("rot_0", "rot_1", "rot_2", "rot_3"), q / np.linalg.norm(q, axis=-1, keepdims=True), atol=1e-6)


def test_ply_refuses_batched_or_non_finite_gaussians(tmp_path, rng):
    gaussians = random_gaussians(rng, 4, 0)
    with pytest.raises(ValueError, match="one avatar at a time"):
        write_ply(tmp_path / "a.ply", gaussians.reshape_batch((1,)))
    means = np.asarray(gaussians.means).copy()
    means[2, 0] = np.nan
    bad = Gaussians.create(means, gaussians.log_scales, gaussians.quaternions, gaussians.opacity_logits, gaussians.colors)
    with pytest.raises(ValueError, match=r"non-finite parameters \(first: index 2\)"):
        write_ply(tmp_path / "b.ply", bad)
    assert not (tmp_path / "b.ply").exists()
