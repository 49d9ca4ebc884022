"""What ``avat3r-quickstart`` changes in a config for the device it runs on, and for its bundle.

On a CPU the batch is halved (twice the steps in the same time: the first hundred steps are what a
short budget buys there) and the rasterizer bins 4-pixel tiles (about 4x faster than 16 here,
docs/PERFORMANCE.md). The bundle renders with the never-overflowing intersection buffer, since its
renders are larger than the training views.
"""

from __future__ import annotations

CPU_BATCH_SIZE = 2
CPU_TILE_SIZE = 4
CPU_INTERSECTIONS_PER_GAUSSIAN = 6  # Per-view buffer at 4-pixel tiles: about 4.3 (Gaussian, tile) pairs per Gaussian were measured.


def sized_for_device(config, platform: str) -> tuple[object, str]:
    """``config`` with the rasterizer sized for ``platform``, and a sentence saying what and why."""
    if platform != "cpu" or config.render.backend not in ("auto", "xla"):
        return config, f"{platform}: the config's rasterizer settings (backend {config.render.backend}, {config.render.tile_size}-px tiles)"
    gaussians_per_view = config.data.num_input_views * config.data.image_height * config.data.image_width
    sized = config.copy_and_resolve_references()
    sized.data.batch_size = min(config.data.batch_size, CPU_BATCH_SIZE)
    sized.render.tile_size = CPU_TILE_SIZE
    sized.render.max_intersections = CPU_INTERSECTIONS_PER_GAUSSIAN * gaussians_per_view
    reason = (
        f"cpu: batch {sized.data.batch_size} (of {config.data.batch_size}: more, cheaper steps in the time there is) and "
        f"the xla rasterizer on {CPU_TILE_SIZE}-px tiles with a {sized.render.max_intersections}-pair buffer per view "
        f"(its cost follows tile area x buffer; 4x faster than {config.render.tile_size}-px tiles here)"
    )
    return sized, reason


def inference_config(config):
    """``config`` for the bundle: the intersection buffer of the default size, which never overflows
    (the renders are larger than the training views, so a Gaussian covers more tiles)."""
    bundled = config.copy_and_resolve_references()
    bundled.render.max_intersections = 0
    return bundled
