"""benchmarks.batched_steps on the tiny model: the measurement runs and the step queue
batches the sequences (the speed means nothing here; this checks the code)."""

from __future__ import annotations

from benchmarks import batched_steps
from realm_ext.backends.cpu import CpuBackend
from realm_ext.model import load_gguf


def test_batched_steps_measure(model_path) -> None:
    model = load_gguf(model_path("Q4_K_M"))
    try:
        backend = CpuBackend(n_threads=2)
        one = batched_steps.measure(backend, model, 1, 4)
        four = batched_steps.measure(backend, model, 4, 4)
    finally:
        model.close()
    assert one["calls_per_step"] == 1.0 and one["tok_s"] > 0 and one["ms_per_step"] > 0
    assert four["seqs"] == 4 and four["tok_s"] > 0
    assert four["calls_per_step"] > 1.0  # the four sequences' calls shared steps
