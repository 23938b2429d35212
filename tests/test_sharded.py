"""The chunk layout of a sharded capture (no cluster needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from factorlens.sharded import chunk_layout


@given(
    widths=st.lists(st.integers(1, 200_000), min_size=1, max_size=5),
    n=st.integers(1, 3_000_000),
    batch=st.integers(1, 1024),
    workers=st.integers(1, 64),
)
def test_every_shard_starts_on_a_chunk_boundary_of_every_block(widths, n, batch, workers):
    shapes = {f"b{i}": (w,) for i, w in enumerate(widths)}
    chunks, shard = chunk_layout(shapes, n, batch, workers)
    assert shard % batch == 0 and shard >= batch
    for rows in chunks.values():
        assert rows % batch == 0 and shard % rows == 0  # whole batches; shards on boundaries
        assert rows <= shard


def test_shards_are_many_enough_for_the_workers_and_chunks_about_16_mib():
    chunks, shard = chunk_layout({"input": (784,), "fc": (10,)}, 1_000_000, 512, 2)
    assert shard == 512 * 64  # 62,500 rows a worker / 8 -> 122 batches -> a power of two
    assert chunks["input"] == 512 * 8  # 16 MiB / 3,136 B = 5,350 rows -> 10 batches -> 8
    assert chunks["fc"] == shard  # 419,430 rows wanted, capped at the shard
