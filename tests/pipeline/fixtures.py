"""The tests' tiny user data and teachers: the README's example writers (scripts/make_examples.py)."""

from scripts.make_examples import (  # noqa: F401
    HUB_DIT_SCHEDULER,
    HUB_DIT_TRANSFORMER,
    SHAPES,
    shape_image,
    write_cifar10_layout,
    write_hub_cache,
    write_hub_dit_pipeline,
    write_image_folder,
    write_latent_pipeline,
    write_pixel_pipeline,
)
