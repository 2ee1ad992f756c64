"""The advisor and the sweep on Ray (issue 9): a local instance, the same answers as the process pool, the
work done in Ray's workers."""

from __future__ import annotations

import pytest

from splitsim.advisor import Question, advise, candidate_rows

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'splitsim[ray]')")

pytestmark = pytest.mark.slow  # starts and stops a local Ray instance


def _question() -> Question:
    return Question(base={"name": "q", "model": "llama-3-8b", "cluster": "h100-nvlink-node", "sim": {"seed": 0},
                          "scheduler": {"policy": "chunked", "max_num_seqs": 16},
                          "workload": {"num_requests": 1, "rate": 0, "prompt_tokens": 128, "output_tokens": 64}},
                    gpus=2, weights=("bf16", "fp8"))


def test_ray_gives_the_advice_and_sweep_of_the_process_pool_from_its_workers(tmp_path):
    from splitsim.sweep import sweep

    scenario = tmp_path / "s.yaml"
    scenario.write_text("model: llama-3-8b\ncluster: h100-nvlink-node\nparallel: {tp: 1}\n"
                        "workload: {num_requests: 40, rate: 5, prompt_tokens: 128, output_tokens: 32}\n")
    grid = [("parallel.tp", [1, 2]), ("precision.weights", ["bf16", "fp8"])]
    seen = []
    driver = []

    def on_workers(workers) -> None:
        seen.append(workers)
        driver.append(ray.get_runtime_context().get_worker_id())

    on_ray = advise(_question(), ray="auto", on_workers=on_workers)
    local = advise(_question(), jobs=2)
    assert candidate_rows(on_ray) == candidate_rows(local)
    workers = seen[0]
    assert type(workers).__name__ == "RayWorkers" and workers.ran_in and driver[0] not in workers.ran_in
    assert not ray.is_initialized()  # the instance it started is stopped

    ray.init(include_dashboard=False, log_to_driver=False)  # a connection of the caller's is used and kept
    try:
        swept = sweep(scenario, grid, ray="auto")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert swept.equals(sweep(scenario, grid, jobs=2))
    assert (swept["error"] == "").all() and len(swept) == 4
