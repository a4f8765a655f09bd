"""The simulated engine: vLLM v1's scheduling behaviour without a GPU.

``python -m infergridd.sim`` serves the OpenAI API on a port like a
real vLLM (or, with ``--personality sglang``, like SGLang); every test and
benchmark of InferGrid runs against it.  Layout: ``profile`` (timings, YAML),
``model`` (the pure step-loop scheduler), ``api`` (OpenAI shapes),
``metrics`` (Prometheus text), ``server`` (aiohttp shell), ``__main__`` (CLI).
"""
