import functools

import jax
import jax.numpy as jnp
import numpy as np

from avat3r_jax.geometry import project_points
from avat3r_jax.render import project, renderer
from avat3r_jax.render.alpha import ALPHA_MIN, splat_alpha
from avat3r_jax.render.project import LOW_PASS
from avat3r_jax.render.project_triton import KernelSplatTable
from avat3r_jax.render.tile_math import TABLE_WIDTH
from tests.render.scenes import IMAGE_SIZE, random_cameras, random_gaussians


@functools.partial(jax.jit, static_argnames=("near", "far"))  # eager, op by op, is several times slower on 2 cores
def _project(g, cams, near=0.01, far=100.0):
    return project(g.means, g.covariances, g.opacities, cams.K, cams.world_to_cam, IMAGE_SIZE, near, far)


def test_means_and_conics_match_the_projection_jacobian(x64):
    """The EWA covariance equals J Σ J^T + 0.3 I with J the autodiff Jacobian of the pixel projection."""
    rng = np.random.default_rng(1)
    cams = random_cameras(rng, 2)
    g = random_gaussians(rng, 12, spread=0.5).astype(jnp.float64)
    cams = jax.tree.map(lambda x: x.astype(jnp.float64), cams)
    proj = _project(g, cams)
    assert bool(jnp.all(proj.visible)), "a Gaussian inside the view was culled"
    for c in range(2):
        pixel_of = lambda x, c=c: project_points(cams.K[c], cams.world_to_cam[c], x[None])[0][0]
        uv, _ = project_points(cams.K[c], cams.world_to_cam[c], g.means)
        np.testing.assert_allclose(proj.means2d[c], uv, rtol=1e-12)
        jac = jax.jit(jax.vmap(jax.jacfwd(pixel_of)))(g.means)  # [N, 2, 3]
        cov2d = jac @ g.covariances @ jnp.swapaxes(jac, -1, -2) + LOW_PASS * jnp.eye(2)
        inv = jnp.linalg.inv(cov2d)
        np.testing.assert_allclose(proj.conics[c], jnp.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1), rtol=1e-9)


def test_culling_near_far_and_off_screen():
    rng = np.random.default_rng(2)
    cams = random_cameras(rng, 1)
    g = random_gaussians(rng, 4, spread=0.01)
    eye, forward = cams.centers[0], -cams.centers[0] / jnp.linalg.norm(cams.centers[0])
    right = cams.world_to_cam[0, 0, :3]
    means = jnp.stack([eye - 0.5 * forward, eye + 0.005 * forward, eye + 5.0 * forward, eye + forward + 3.0 * right])
    g = g.__class__.create(means, g.log_scales, g.quaternions, jnp.full(4, 3.0), g.colors)
    proj = _project(g, cams, near=0.01, far=4.0)
    # behind the camera, before near, beyond far, far off to the side
    np.testing.assert_array_equal(proj.visible[0], [False, False, False, False])
    assert bool(jnp.all(proj.radii == 0)) and bool(jnp.all(jnp.isfinite(proj.conics)))
    proj = _project(g, cams, near=0.001, far=10.0)
    np.testing.assert_array_equal(proj.visible[0], [False, True, True, False])


def test_footprint_box_contains_every_pixel_with_alpha_over_threshold():
    """Sampled densely around each Gaussian, alpha >= 1/255 happens only inside mean ± radii."""
    rng = np.random.default_rng(3)
    cams = random_cameras(rng, 2)
    g = random_gaussians(rng, 30)
    proj = _project(g, cams)
    opac = jnp.broadcast_to(g.opacities, proj.depths.shape)
    offsets = jnp.stack(jnp.meshgrid(jnp.linspace(-12, 12, 241), jnp.linspace(-12, 12, 241)), -1).reshape(-1, 2)  # [S, 2]
    conic = proj.conics[..., None, :]
    alpha, _ = splat_alpha(offsets[:, 0], offsets[:, 1], conic[..., 0], conic[..., 1], conic[..., 2], opac[..., None])
    outside = jnp.any(jnp.abs(offsets) > proj.radii[..., None, :], axis=-1)  # [C, N, S]
    relevant = proj.visible[..., None] & outside
    assert float(jnp.max(jnp.where(relevant, alpha, 0.0))) < ALPHA_MIN
    # The box is tight: some sampled point near its edge does reach the threshold.
    inner = jnp.all(jnp.abs(offsets) <= 0.9 * proj.radii[..., None, :], axis=-1)
    reaches = jnp.any(inner & (alpha > 0), axis=-1)
    assert bool(jnp.all(reaches | ~proj.visible | jnp.all(proj.radii < 1.5, -1)))


def test_projection_gradients_are_finite_for_culled_gaussians():
    rng = np.random.default_rng(4)
    cams = random_cameras(rng, 2)
    g = random_gaussians(rng, 10, behind=cams)

    def loss(means):
        proj = project(means, g.covariances, g.opacities, cams.K, cams.world_to_cam, IMAGE_SIZE, 0.01, 100.0)
        return jnp.sum(proj.means2d) + jnp.sum(proj.conics) + jnp.sum(proj.depths)

    assert bool(jnp.all(jnp.isfinite(jax.jit(jax.grad(loss))(g.means))))


def _splat_table_scene():
    """(Gaussians, cameras, colours ``[2, 3, N, 3]``): 2 camera sets of 3 share one Gaussian set of N = 37 (not a multiple
    of the kernel's block), some culled; colours per view, as spherical harmonics give. Few eager JAX ops (each compiles)."""
    rng = np.random.default_rng(5)
    cams = random_cameras(rng, 3, batch=(2,))
    g = random_gaussians(rng, 37, behind=cams)
    return g, cams, jnp.asarray(rng.uniform(size=(2, 3, 37, 3)), jnp.float32)


def test_kernel_splat_table_gradient_matches_xla_autodiff():
    """The Triton splat table (interpret mode): XLA's forward, and the kernel's gradient for the Gaussians (summed
    over views and broadcast camera sets) against XLA's autodiff of the table."""
    g, cams, colors = _splat_table_scene()
    cotangent = jnp.asarray(np.random.default_rng(6).normal(size=(6, 37, TABLE_WIDTH)), jnp.float32)
    kernel = KernelSplatTable(gaussians_per_program=32, interpret=True)

    def value_and_gradient(table_of, *gaussians):
        out = table_of((*gaussians, cams.K, cams.world_to_cam), IMAGE_SIZE, (0.01, 100.0))
        return jnp.sum(out[1] * cotangent), out

    def both(g, colors):
        gaussians = (g.means, g.covariances, g.opacities, colors)
        grad = lambda table_of: jax.grad(functools.partial(value_and_gradient, table_of), argnums=(0, 1, 2, 3), has_aux=True)
        return grad(kernel)(*gaussians), grad(renderer._splat_table_xla)(*gaussians)

    # A one-call program: unoptimised machine code compiles faster.
    compiled = jax.jit(both).lower(g, colors).compile(compiler_options={"xla_backend_optimization_level": 0})
    (by_kernel, (projection, table)), (by_xla, (expected_projection, expected_table)) = compiled(g, colors)
    assert not bool(jnp.all(projection.visible)) and bool(jnp.any(projection.visible))
    np.testing.assert_array_equal(table, expected_table)
    for field in ("means2d", "conics", "depths", "radii", "visible"):
        np.testing.assert_array_equal(getattr(projection, field), getattr(expected_projection, field))
    for got, expected in zip(by_kernel, by_xla):
        scale = float(jnp.max(jnp.abs(expected)))
        assert scale > 0 and float(jnp.max(jnp.abs(got - expected))) < 1e-5 * scale


def test_kernel_splat_table_gradient_is_xla_s_where_cameras_or_the_projection_are_differentiated():
    """Lowered for a GPU from this host: the kernel runs for the Gaussians' gradient only; differentiated cameras, or a
    cotangent for the projection itself (which the kernel does not read), take XLA's autodiff of the same forward."""
    g, cams, colors = _splat_table_scene()

    def loss(means, world_to_cam, with_projection):
        scene = (means, g.covariances, g.opacities, colors, cams.K, world_to_cam)
        projection, table = KernelSplatTable()(scene, IMAGE_SIZE, (0.01, 100.0))
        return jnp.sum(table) + (jnp.sum(projection.depths) if with_projection else 0.0)

    gpu = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda")
    kernels = {}
    for name, argnums, with_projection in (("gaussians", 0, False), ("cameras", 1, False), ("projection", 0, True)):
        gradient = jax.jit(jax.grad(functools.partial(loss, with_projection=with_projection), argnums=argnums))
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu)):
            text = gradient.trace(g.means, cams.world_to_cam).lower(lowering_platforms=("cuda",)).as_text()
        kernels[name] = text.count("__gpu$xla.gpu.triton")
    assert kernels == {"gaussians": 1, "cameras": 0, "projection": 0}
