"""Loop-level debugging tools, each a small module called from the loop or the entry point with one line:
watchdog (a hung rank named with its stack), replay (a diverged step rerun under anomaly detection),
determinism (bit-identical runs), health (TensorBoard histograms), inspect (mode=inspect)."""
