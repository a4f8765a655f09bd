"""The simulated engine: vLLM v1's scheduling behaviour without a GPU.

``python -m infergridd.sim`` serves the OpenAI API on a port like a
real vLLM (or, with ``--personality sglang``, like SGLang); every test and
benchmark of InferGrid runs against it.  Layout: ``profile`` (timings, YAML),
``model`` (the pure step-loop scheduler), ``steploop`` (``SimEngine``: the
asyncio loop driving the model, sleep, faults), ``api`` (OpenAI shapes),
``metrics`` (Prometheus text), ``http_openai`` / ``http_vllm`` / ``http_sglang``
(the HTTP dialects), ``server`` (the app and its listener), ``__main__`` (CLI).
"""
