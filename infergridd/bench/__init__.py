"""The fairness benchmark behind ``infergrid bench`` (see ``cli.py`` for the flow).

One module per concern: ``workload`` (YAML → tenants and a seeded request plan),
``loadgen`` (the open-loop HTTP client), ``engines`` (engines the harness starts
itself for the direct and solo arms), ``appliance`` (``infergrid serve`` for the
scheduled arms), ``stats`` (percentiles with bootstrap intervals), ``report`` and
``plots`` (the files a run leaves behind), ``runner`` (arms one after another)
and ``cli`` (argument parsing only).
"""
