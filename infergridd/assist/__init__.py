"""Engine assist: InferGrid's step policy inside the engine (DESIGN §5).

A front end cannot make an engine's steps shorter; the engine's own scheduler
decides what a newly arrived prompt shares its step with.  InferGrid launches
the engine, so it also chooses that scheduler: ``policy`` is the pure decision
(used by the simulated engine and by the vLLM plugin alike, so ``bench/floor.py``
measures the very decisions the real engine makes), ``vllm_scheduler`` the
vLLM v1 ``--scheduler-cls`` that applies it, ``support`` the version range it
was tested with.
"""
