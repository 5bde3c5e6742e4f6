"""Run machinery: the run folder and its lock, per-pair outputs, packs, live progress and the Ray fan-out (retries, resume)."""
