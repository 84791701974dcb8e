"""The views: what the mount serves, built over the index.

- `tree`: the served tree -- the index's own, plus one resized tree per `--resize` spec and the
  shard view -- and the inode ranges that tell them apart;
- `resize`: a resized file's bytes (Pillow, DCT-domain downscaling) and their persistent cache;
- `shards`: `shards/wds/`, WebDataset tar shards computed from the index on read;
- `tfrecord`: `shards/tfrecord/`, the same samples as TFRecord shards, over `shards`' order;
- `layoutfile`: the two shard views' layout, made once per mount by a process of its own into a
  file that every serving process maps.

Arrows point down: `ops` (the operation core) uses `tree`, which uses `resize`, `layoutfile`,
`shards` and `tfrecord`; `layoutfile` uses `tfrecord` and `shards`, `tfrecord` uses `shards`;
these use the index (`imagenetfs.index`) and nothing above it.
"""
