"""fabric_mvsplat: MVSplat on an explicit Lightning Fabric training loop."""

__version__ = "0.1.0"
