import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.render import bin_gaussians, rasterize
from avat3r_jax.render.binning import gather_per_gaussian, rank_counts, tile_rectangles
from tests.render.scenes import IMAGE_SIZE, random_cameras, random_gaussians

SIZE = (40, 56)  # 3 x 4 tiles of 16


def _random_screen(rng, views=2, n=30):
    means2d = jnp.asarray(rng.uniform(-10, 66, size=(views, n, 2)), jnp.float32)
    radii = jnp.asarray(rng.uniform(0.5, 20, size=(views, n, 2)), jnp.float32)
    depths = jnp.asarray(rng.uniform(0.5, 3.0, size=(views, n)), jnp.float32)
    visible = jnp.asarray(rng.uniform(size=(views, n)) > 0.2)
    return means2d, radii, depths, visible


def _expected_pairs(means2d, radii, visible, depths, max_tiles):
    """Brute force: every (tile, depth, gaussian) the binner should emit, in (tile, depth) order."""
    lo, hi = (np.asarray(a) for a in tile_rectangles(means2d, radii, visible, SIZE, 16))
    pairs = []
    for i in range(means2d.shape[0]):
        tiles = [y * 4 + x for y in range(lo[i, 1], hi[i, 1]) for x in range(lo[i, 0], hi[i, 0])]
        pairs += [(t, float(depths[i]), i) for t in tiles[:max_tiles]]
    return sorted(pairs)


def test_bins_hold_every_pair_in_tile_depth_order():
    rng = np.random.default_rng(20)
    means2d, radii, depths, visible = _random_screen(rng)
    bins = jax.jit(bin_gaussians, static_argnums=(4, 5, 6, 7))(means2d, radii, depths, visible, SIZE, 16, 4, 30 * 12)
    for v in range(2):
        expected = _expected_pairs(means2d[v], radii[v], visible[v], depths[v], max_tiles=4)
        ranges = np.asarray(bins.tile_ranges[v])
        got = [(t, float(depths[v, g]), int(g)) for t in range(12) for g in np.asarray(bins.gaussian_ids[v, ranges[t] : ranges[t + 1]])]
        assert got == expected  # same pairs, sorted by tile then depth
        touched = np.prod(np.maximum(np.subtract(*tile_rectangles(means2d[v], radii[v], visible[v], SIZE, 16)[::-1]), 0), -1)
        assert int(bins.stats.overflow_gaussians[v]) == int(np.sum(touched > 4)) > 0
        assert int(bins.stats.dropped_intersections[v]) == int(np.sum(touched - np.minimum(touched, 4)))
        assert int(bins.stats.intersections[v]) == len(expected) == ranges[-1]


def test_buffer_overflow_keeps_the_nearest_and_counts_the_rest():
    rng = np.random.default_rng(21)
    means2d, radii, depths, visible = _random_screen(rng, views=1)
    binned = jax.jit(bin_gaussians, static_argnums=(4, 5, 6, 7))
    full = binned(means2d, radii, depths, visible, SIZE, 16, 16, 30 * 12)
    total = int(full.stats.intersections[0])
    small = binned(means2d, radii, depths, visible, SIZE, 16, 16, total // 2)
    assert int(small.stats.intersections[0]) == total // 2
    assert int(small.stats.dropped_intersections[0]) == int(full.stats.dropped_intersections[0]) + total - total // 2
    rendered = set(np.asarray(full.gaussian_ids[0, :total]).tolist())
    kept = set(np.asarray(small.gaussian_ids[0, : total // 2]).tolist())
    dropped = rendered - kept
    assert dropped and min(float(depths[0, g]) for g in dropped) >= max(float(depths[0, g]) for g in kept)


def test_tile_overflow_is_reported_by_rasterize():
    rng = np.random.default_rng(22)
    cameras = random_cameras(rng, 2)
    gaussians = random_gaussians(rng, 10)
    big = gaussians.__class__.create(
        gaussians.means.at[0].set(0.0),
        gaussians.log_scales.at[0].set(jnp.log(0.6)),
        gaussians.quaternions,
        gaussians.opacity_logits.at[0].set(3.0),
        gaussians.colors,
    )
    render = jax.jit(lambda g: rasterize(g, cameras, IMAGE_SIZE, jnp.zeros(3), backend="xla", max_tiles_per_gaussian=1).stats)
    stats = render(big)
    assert bool(jnp.all(stats.overflow_gaussians >= 1)) and bool(jnp.all(stats.dropped_intersections >= 1))


def test_gather_per_gaussian_sums_each_gaussians_rows_also_when_the_buffer_overflows():
    rng = np.random.default_rng(23)
    means2d, radii, depths, visible = _random_screen(rng)
    binned = jax.jit(bin_gaussians, static_argnums=(4, 5, 6, 7))
    for capacity in (30 * 12, 40):  # everything fits; the buffer cuts the farthest pairs
        bins = binned(means2d, radii, depths, visible, SIZE, 16, 4, capacity)
        values = jnp.asarray(rng.normal(size=(2, capacity, 3)), jnp.float32)
        got = np.asarray(jax.jit(gather_per_gaussian)(values, bins))
        for v in range(2):
            total = int(bins.tile_ranges[v, -1])
            expected = np.zeros((means2d.shape[1], 3), np.float64)
            np.add.at(expected, np.asarray(bins.gaussian_ids[v, :total]), np.asarray(values[v, :total], np.float64))
            np.testing.assert_allclose(got[v], expected, atol=1e-5)
            assert int(jnp.sum(bins.emit_count[v])) == total
            # The same runs per depth rank (the Triton gradient sum's view of them).
            np.testing.assert_array_equal(rank_counts(bins)[v], bins.emit_count[v][bins.rank_gaussian[v]])
            np.testing.assert_array_equal(bins.rank_start[v], bins.emit_start[v][bins.rank_gaussian[v]])


def test_one_sort_over_all_views_matches_a_sort_per_view(monkeypatch):
    from avat3r_jax.render import binning

    rng = np.random.default_rng(24)
    means2d, radii, depths, visible = _random_screen(rng, views=3)
    depths = depths.at[:, :4].set(depths[:, 4:5])  # ties keep index order in both sorts
    # A new function per call: FLAT_SORT_LIMIT is read while tracing, so a cached trace would hide the patch.
    binned = lambda: jax.jit(lambda *screen: bin_gaussians(*screen, SIZE, 16, 4, 100, (0.01, 100.0)))(means2d, radii, depths, visible)
    flat = binned()
    monkeypatch.setattr(binning, "FLAT_SORT_LIMIT", 0)  # every key too large: one sort per view
    per_view = binned()
    for got, want in zip(jax.tree.leaves(flat), jax.tree.leaves(per_view)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    tile = jnp.asarray(rng.integers(0, 13, size=(3, 50)), jnp.int32)
    for limit, short in ((2**31 - 1, 2**16), (2**31 - 1, 0), (0, 2**16)):  # one flat sort (uint16, int32 keys); one per view
        monkeypatch.setattr(binning, "FLAT_SORT_LIMIT", limit)
        monkeypatch.setattr(binning, "SHORT_KEY_LIMIT", short)
        order, sorted_tile = binning.sort_slots_by_tile(tile, 12)
        assert sorted_tile.dtype == jnp.int32
        np.testing.assert_array_equal(order, np.argsort(np.asarray(tile), axis=-1, kind="stable"))
        np.testing.assert_array_equal(sorted_tile, np.sort(np.asarray(tile), axis=-1))


def test_depth_order_of_all_views_in_one_sort_is_each_views_stable_depth_order():
    from avat3r_jax.render.binning import sort_by_depth

    rng = np.random.default_rng(25)
    near, far = 0.01, 100.0
    depths = np.exp(rng.uniform(np.log(near), np.log(far), size=(5, 64))).astype(np.float32)
    depths[:, :8] = depths[:, 8:9]  # ties
    depths[0, 10] = np.nextafter(np.float32(near), np.float32(1))  # the range's ends
    depths[1, 11] = np.nextafter(np.float32(far), np.float32(0))
    visible = rng.uniform(size=(5, 64)) > 0.3
    key = np.where(visible, depths, np.inf)
    expected = np.argsort(key, axis=-1, kind="stable")
    np.testing.assert_array_equal(sort_by_depth(jnp.asarray(depths), jnp.asarray(visible), (near, far)), expected)
    np.testing.assert_array_equal(sort_by_depth(jnp.asarray(depths), jnp.asarray(visible), None), expected)
    with pytest.raises(ValueError, match="depth_range"):
        sort_by_depth(jnp.asarray(depths), jnp.asarray(visible), (0.0, far))


@pytest.mark.parametrize("per_program, emission_rows", [(32, False), (128, False), (32, True)])
def test_triton_gradient_sum_adds_each_gaussians_rows_over_pixel_blocks_also_when_the_buffer_overflows(per_program, emission_rows):
    from avat3r_jax.render.pallas_triton import LANE_PARTS, TritonKernels

    rng = np.random.default_rng(26)
    means2d, radii, depths, visible = _random_screen(rng, n=300)  # 3 programs of 128 Gaussians, the last one padded
    kernels = TritonKernels(gaussians_per_program=per_program, emission_rows=emission_rows, interpret=True)
    for capacity in (300 * 12, 200):  # everything fits; the buffer cuts the farthest pairs
        bins = bin_gaussians(means2d, radii, depths, visible, SIZE, 16, 4, capacity, (0.01, 100.0))
        grads = rng.normal(size=(2, capacity + 32, 4, 10))  # [V, M + zero block rows, S, D] in sorted order
        unused = np.arange(capacity + 32) >= np.asarray(bins.tile_ranges[:, -1:])  # [V, M'] rows no backward program writes
        grads[unused] = np.nan  # must not be read (the buffer is not zero-filled)
        grads = jnp.asarray(grads, jnp.float32)
        stored = grads  # where the backward kernel puts them: sorted row p at unsorted slot emitted_slot[p] with emission_rows
        if emission_rows:
            stored = jax.vmap(lambda g, slot: g.at[slot].set(g[: slot.shape[0]]))(grads, bins.emitted_slot)
        split = tuple(np.split(stored, np.cumsum(LANE_PARTS)[:-1], axis=-1))  # one array per lane part
        got = np.asarray(jax.jit(kernels.per_gaussian)(split, bins))
        assert got.shape == (2, 300, 10)
        for v in range(2):
            total = int(bins.tile_ranges[v, -1])
            expected = np.zeros((300, 10), np.float64)
            rows = np.asarray(grads[v, :total], np.float64).sum(1)
            np.add.at(expected, np.asarray(bins.gaussian_ids[v, :total]), rows)
            np.testing.assert_allclose(got[v], expected, rtol=1e-6, atol=1e-5)
        assert int(jnp.max(bins.emit_count)) > 1


@pytest.mark.parametrize("zero_block_rows, indirect_rows, emission_rows", [(4, True, False), (32, False, False), (4, True, True)])
def test_triton_backward_writes_every_row_of_each_tile_and_nothing_past_them(zero_block_rows, indirect_rows, emission_rows):
    """The gradient rows get no zero fill: each program must write all its tile's rows (also where no pixel
    of its block is touched) and no row of another tile (a race on the GPU): rows past the last tile stay unwritten."""
    from avat3r_jax.render.pallas_triton import TritonKernels

    rng = np.random.default_rng(27)
    means2d, radii, depths, visible = _random_screen(rng, n=60)
    bins = bin_gaussians(means2d, radii, depths, visible, SIZE, 16, 4, 60 * 12, (0.01, 100.0))
    conics = jnp.broadcast_to(jnp.asarray([0.02, 0.0, 0.03], jnp.float32), (2, 60, 3))
    rest = jnp.asarray(rng.uniform(0.2, 0.9, size=(2, 60, 5)), jnp.float32)  # opacity, RGB, depth
    table = jnp.concatenate([means2d, conics, rest], -1)  # [V, N, 10]
    options = dict(zero_block_rows=zero_block_rows, indirect_rows=indirect_rows, emission_rows=emission_rows)
    kernels = TritonKernels(chunk=2, interpret=True, **options)
    data, ranges = kernels.layout(table, bins)
    _, transmittance, last = kernels.forward(data, ranges, 4, 16)
    grad_features = jnp.asarray(rng.normal(size=(2, 12, 256, 4)), jnp.float32)
    parts = kernels.backward(data, ranges, transmittance, last, grad_features, transmittance, 4, 16)
    grads = np.concatenate([np.asarray(p) for p in parts], -1)  # [V, M', S, D]
    assert grads.shape[-1] == 10
    counts = np.diff(np.asarray(bins.tile_ranges), axis=1)
    assert any(c[c > 0][-1] % zero_block_rows for c in counts)  # a last tile whose rows end inside a zero block
    assert int(np.max(last)) > 0 and np.min(np.asarray(last)[np.asarray(last) > 0]) < np.max(counts)  # blocks stop early
    capacity = bins.gaussian_ids.shape[1]
    for v in range(2):
        total = int(bins.tile_ranges[v, -1])
        assert np.all(np.isfinite(grads[v, :total])), "a tile row was not written"
        # With emission_rows the zero blocks' lanes past a tile write the spare rows past M, which nothing reads.
        assert np.all(np.isnan(grads[v, total : capacity if emission_rows else None])), "a row past the last tile was written"
        assert np.any(grads[v, :total] != 0) and np.any(grads[v, :total] == 0)


def test_triton_backward_names_a_zero_block_size_under_one():
    from avat3r_jax.render.pallas_triton import TritonKernels

    data, ranges = (jnp.zeros((1, 10, 16)),), jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="zero_block_rows must be >= 1, got 0"):
        TritonKernels(zero_block_rows=0, interpret=True).backward(data, ranges, None, None, None, None, 1, 16)


@pytest.mark.parametrize("max_tiles, slot_search", [(4, False), (16, False), (4, True), (16, True)])
def test_triton_slot_kernel_bins_exactly_as_the_xla_slot_writer_also_when_the_buffer_overflows(max_tiles, slot_search):
    from avat3r_jax.render.pallas_triton import TritonKernels

    rng = np.random.default_rng(28)
    means2d, radii, depths, visible = _random_screen(rng, n=300)  # 3 programs of 128 ranks, the last one padded
    writer = TritonKernels(slot_search=slot_search, interpret=True).slot_writer()
    for capacity in (300 * max_tiles, 500):  # everything fits; the buffer cuts the farthest pairs
        binned = lambda write, capacity=capacity: jax.jit(
            lambda *s: bin_gaussians(*s, SIZE, 16, max_tiles, capacity, (0.01, 100.0), write)
        )(means2d, radii, depths, visible)
        expected, got = binned(None), binned(writer)
        assert int(jnp.max(expected.stats.dropped_intersections)) > 0 or capacity > 500
        for want, have in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            np.testing.assert_array_equal(np.asarray(have), np.asarray(want))
