"""Several front-door processes (issue 17.3): the count, its config key, and /metrics
summed over processes (prometheus multiprocess files, each writer a real process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infergridd.config import ConfigError, loads
from infergridd.frontdoor import workers

BASE = "version: 1\nmodels: [{name: m, engine: sim}]\n"


def test_processes_resolved() -> None:
    assert workers.processes(3) == 3
    assert workers.processes(0, cores=2) == 2
    assert workers.processes(0, cores=32) == workers.AUTO_MAX == 4
    assert workers.processes(0, cores=1) == 1
    assert loads(BASE).frontdoor.processes == 0  # the default: automatic
    assert loads(BASE + "frontdoor: {processes: 1}\n").frontdoor.processes == 1
    assert loads(BASE + "frontdoor: {processes: 0}\n").frontdoor.processes == 0


@pytest.mark.parametrize("bad", ["-1", "65"])
def test_bad_processes_names_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"frontdoor\.processes"):
        loads(BASE + f"frontdoor: {{processes: {bad}}}\n")


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from infergridd.frontdoor.metrics import FrontdoorMetrics
    m = FrontdoorMetrics(Path(sys.argv[1]), sys.argv[2])
    m.watch("infergrid_frontdoor_connections", "open client connections", lambda: 7.0)
    for _ in range(int(sys.argv[3])):
        m.requests.labels("t", "m", "ok").inc()
        m.ttft.labels("t", "m").observe(0.01)
        m.fast_dispatches.inc()
    m.inflight.labels("t", "m").inc(int(sys.argv[4]))
    if sys.argv[5] == "render":
        sys.stdout.write(m.render().decode())
""")


def _run(d: Path, index: str, n: int, inflight: int, render: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WRITER, str(d), index, str(n), str(inflight),
                           "render" if render else "-"], capture_output=True, text=True,
                          timeout=60, check=True)


def _value(page: str, prefix: str) -> float:
    lines = [ln for ln in page.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, (prefix, lines)
    return float(lines[0].rsplit(" ", 1)[1])


def test_metrics_page_sums_every_process(tmp_path: Path) -> None:
    d = workers.metrics_dir(tmp_path)
    workers.clear_metrics(tmp_path)
    first = _run(d, "0", 3, 2, render=False)  # a process that has exited
    assert first.returncode == 0
    page = _run(d, "1", 4, 1, render=True).stdout
    assert _value(page, 'infergrid_requests_total{') == 7.0
    assert _value(page, 'infergrid_ttft_seconds_count{') == 7.0
    assert _value(page, 'infergrid_inflight{') == 3.0  # both still counted (no one reaped)
    # the fast path's count too (it was the answering process's own: 4)
    assert _value(page, 'infergrid_frontdoor_fast_path_dispatches ') == 7.0
    # per process, labelled: the answering one's own
    assert 'infergrid_frontdoor_connections{process="1"} 7.0' in page
    # in flight: live processes only; a dead one's files are dropped by process_gone
    for f in d.glob("gauge_livesum_*.db"):
        pid = int(f.stem.rsplit("_", 1)[1])
        workers.process_gone(tmp_path, pid)
    page = _run(d, "2", 0, 0, render=True).stdout
    assert _value(page, 'infergrid_requests_total{') == 7.0  # counters stay summed
    assert _value(page, 'infergrid_frontdoor_fast_path_dispatches ') == 7.0
    assert _value(page, 'infergrid_inflight{') == 0.0
    workers.clear_metrics(tmp_path)
    assert not list(d.glob("*.db"))


def test_metrics_page_of_several_processes_declares_every_family_before_any_sample(
        tmp_path: Path) -> None:
    """One process alone exports each family (HELP and TYPE) from its start; the summed
    page of several must too: the dashboards and alert rules read
    ``infergrid_rejections_total`` and the phase histogram before anything is refused or
    answered (prometheus_client's multiprocess collector alone drops them until then)."""
    d = workers.metrics_dir(tmp_path)
    workers.clear_metrics(tmp_path)
    page = _run(d, "0", 0, 0, render=True).stdout
    for fam, kind in (("infergrid_requests_total", "counter"),
                      ("infergrid_rejections_total", "counter"),
                      ("infergrid_tokens_total", "counter"),
                      ("infergrid_request_phase_seconds", "histogram"),
                      ("infergrid_ttft_seconds", "histogram"),
                      ("infergrid_inflight", "gauge")):
        assert f"# TYPE {fam} {kind}\n" in page, fam
    # once written, a family is the files' sum, declared once
    page = _run(d, "1", 2, 0, render=True).stdout
    assert page.count("# TYPE infergrid_requests_total counter\n") == 1
    assert _value(page, 'infergrid_requests_total{') == 2.0


SAMPLER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from infergridd.frontdoor.metrics import FrontdoorMetrics
    from infergridd.frontdoor.status_page import read_sample
    m = FrontdoorMetrics(Path(sys.argv[1]), sys.argv[2])
    m.tokens.labels("acme", "demo", "out").inc(int(sys.argv[3]))
    m.ttft.labels("acme", "demo").observe(0.2)
    s = read_sample(m, 1.0)
    print(s.tokens_out["acme"], s.ttft["acme"][0.25])
""")


def test_status_page_history_sums_every_process(tmp_path: Path) -> None:
    """The status page's throughput and TTFT come from whichever process answers it:
    each must sample every process's counters (it sampled only its own: a page showing
    half the appliance's tokens, a different half on each refresh)."""
    d = workers.metrics_dir(tmp_path)
    workers.clear_metrics(tmp_path)

    def sample(index: str, tokens: int) -> list[float]:
        r = subprocess.run([sys.executable, "-c", SAMPLER, str(d), index, str(tokens)],
                           capture_output=True, text=True, timeout=60, check=True)
        return [float(x) for x in r.stdout.split()]

    assert sample("0", 30) == [30.0, 1.0]
    assert sample("1", 12) == [42.0, 2.0]  # its own 12 and the other's 30
