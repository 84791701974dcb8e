"""imagenetfs: ImageNet (ILSVRC2012) as a read-only FUSE tree served from SquashFS images."""

__version__ = "0.1.0"
