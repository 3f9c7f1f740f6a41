"""Settings of the tiny training runs that several test files share (`from tiny_runs import TINY_SHAPES`;
pytest puts tests/ on the import path, as for make_block_fixtures)."""

# 3 steps of DiT-Nano/4 on shapes (32×32 RGB), one checkpoint at the end, 2-step sample grids, one thread
TINY_SHAPES = dict(
    data="shapes",
    model="DiT-Nano/4",
    batch_size=8,
    lr=1e-3,
    steps=3,
    log_every=1,
    ckpt_every=3,
    sample_steps=2,
    progress=False,
    threads=1,
)
