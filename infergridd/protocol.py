"""Every message that crosses a process boundary inside InferGrid.

One tagged union of ``msgspec.Struct`` classes, encoded with msgpack.  The tag
is a short string stored in the field ``t``; new fields always carry a default
and ``omit_defaults=True`` keeps them off the wire when unused, so a unit on
the previous minor version decodes what a newer one sends (and vice versa:
unknown fields are ignored by msgspec's default decoder).

Peers and sockets (DESIGN §1, §4):

* front door and supervisor each hold a DEALER connected to the scheduler's
  ROUTER of their own role, ``<runtime>/scheduler/frontdoor.sock`` or
  ``<runtime>/scheduler/supervisor.sock`` (DESIGN §10: the role is the socket,
  never ``Hello.role``, which must agree with it; ``scheduler/endpoints.py``);
* ``infergridctl`` holds a DEALER connected to ``<runtime>/scheduler/control.sock``
  (every command) or ``control-ro.sock`` (read-only ones) and speaks
  ``ControlRequest``/``ControlReply`` only.

Reconciliation: a peer sends ``Hello`` with its *full* state when it starts and
whenever the scheduler answers ``HelloRequired`` (the scheduler restarted and
does not know it) or its heartbeat shows a new scheduler ``instance``.  The
scheduler answers ``Welcome``.  Because the Hello carries everything, any
message lost while the scheduler was away is recovered by the next Hello;
``request_id`` makes every repeated ``Submit``/``Done`` harmless.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

#: Major.minor.  Peers with another *major* are refused with a clear log line.
PROTOCOL_VERSION = "1.0"


def protocol_major(version: str) -> int:
    """Major part of a protocol version string; -1 when it cannot be parsed."""
    try:
        return int(version.split(".", 1)[0])
    except (ValueError, AttributeError):
        return -1


class _Msg(msgspec.Struct, tag_field="t", omit_defaults=True, forbid_unknown_fields=False):
    """Base of every wire message."""


# --------------------------------------------------------------------------- shared records


class Outcome:
    """Values of ``Done.outcome``."""

    OK = "ok"
    CANCELLED = "cancelled"  # client went away
    ENGINE_ERROR = "engine_error"  # engine failed or returned an error
    TIMEOUT = "timeout"
    LOST = "lost"  # the front door that held it is gone (scheduler side only)

    ALL = (OK, CANCELLED, ENGINE_ERROR, TIMEOUT, LOST)


class EngineState:
    """Engine lifecycle states reported by the supervisor (DESIGN §6 ladder)."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    SLEEPING1 = "sleeping1"
    SLEEPING2 = "sleeping2"
    WAKING = "waking"
    STOPPING = "stopping"
    FAILED = "failed"
    UNHEALTHY = "unhealthy"

    ALL = (STOPPED, STARTING, READY, DRAINING, SLEEPING1, SLEEPING2, WAKING, STOPPING,
           FAILED, UNHEALTHY)


class EngineStatus(msgspec.Struct, omit_defaults=True):
    """What the supervisor knows of one engine process; sent in full, never as a diff."""

    engine_id: str  # "<model>-<replica>", stable across restarts of the engine
    model: str
    kind: str  # sim | vllm | sglang | openai
    state: str = EngineState.STOPPED
    endpoint: str = ""  # base URL, e.g. "http://127.0.0.1:41234" (no trailing /v1)
    api_key: str = ""  # the engine's own key; only ever sent over the 0700 runtime dir
    pid: int = 0
    started_at: float = 0.0  # wall clock
    generation: int = 0  # bumped each time the engine process is (re)started
    restarts: int = 0
    max_num_seqs: int = 0  # 0: unknown
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # 0..1
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    supports_priority: bool = False
    priority_sign: int = 1  # +1: lower value runs first (vLLM); -1: higher first (SGLang)
    supports_sleep: bool = False
    memory_bytes: int = 0  # what it holds on the GPU now, per the ledger
    #: stopped by an operator's ``model unload``: stays down until a start, and a
    #: restarted scheduler learns it from here (the supervisor keeps it on disk)
    unloaded: bool = False
    last_error: str = ""
    updated_at: float = 0.0  # wall clock of the last successful poll
    #: the engine's token budget per step (vLLM max_num_batched_tokens); 0: unknown
    max_num_batched_tokens: int = 0
    #: InferGrid's step policy in the engine (DESIGN §5): "on" once the engine itself
    #: reported it loaded, "starting" (asked for, no word from the engine yet), "off";
    #: "" for an engine kind without one.  ``assist_reason`` says why.
    assist: str = ""
    assist_reason: str = ""
    assist_counters: dict[str, int] = {}  # what it did (assist/stats.py AssistCounters)
    #: the GPU indices it is placed on (CUDA_VISIBLE_DEVICES at launch); [] unplaced
    devices: list[int] = []


class GpuDevice(msgspec.Struct, omit_defaults=True):
    """One GPU's ledger as the supervisor keeps it (DESIGN §6): sent with every update."""

    index: int
    uuid: str = ""
    name: str = ""
    total_bytes: int = 0  # 0: unlimited (not accounted)
    free_bytes: int = 0
    source: str = ""  # where the total came from (NVML, gpu.devices, ...)


class RequestHeader(msgspec.Struct, omit_defaults=True):
    """A request's header as the scheduler needs it: the fields ``Submit`` and
    ``QueuedRecord`` share, declared once (subclasses encode exactly these fields,
    in this order, after their own tag)."""

    request_id: str
    tenant: str
    model: str
    prompt_tokens: int
    max_tokens: int
    priority: int = 0  # client-requested, within the tenant
    submitted_at: float = 0.0  # wall clock, keeps its place in line across restarts


class QueuedRecord(RequestHeader):
    """A request the front door holds that has not been dispatched yet."""


class InflightRecord(msgspec.Struct, omit_defaults=True):
    """A dispatched request whose stream the front door is still relaying."""

    request_id: str
    tenant: str
    model: str
    engine_id: str
    prompt_tokens: int
    max_tokens: int
    completion_tokens: int = 0
    dispatched_at: float = 0.0
    lease_id: str = ""  # sent on a slot lease (fast path): charged by the Submit naming it


class TenantStats(msgspec.Struct, omit_defaults=True):
    """Per-tenant view the scheduler publishes (metrics, infergridctl status)."""

    name: str
    weight: float = 1.0
    band: int = 0
    queued: int = 0
    inflight: int = 0
    counter: float = 0.0  # virtual token counter (VTC) or 0 for other policies
    tokens_in: int = 0
    tokens_out: int = 0
    rejected: dict[str, int] = {}  # reason -> count
    rpm: float = 0.0  # effective quota, 0 = unlimited
    tpm: float = 0.0
    burst: float = 0.0


class ModelInfo(msgspec.Struct, omit_defaults=True):
    """Per-model view for /v1/models, /health and infergridctl models."""

    name: str
    state: str  # best state among its engines
    engines: list[str] = []
    ready_engines: int = 0
    preload: bool = True
    memory_bytes: int = 0
    queued: int = 0
    inflight: int = 0
    reason: str = ""  # why it is not ready, when it is not


# --------------------------------------------------------------------------- handshake


class Hello(_Msg, tag="hello"):
    """First message of a peer, and again after any scheduler restart, with full state."""

    role: Literal["frontdoor", "supervisor"]
    instance: str  # random per process start
    protocol_version: str  # always on the wire (no default), so a mismatch is seen
    pid: int = 0
    # front door state
    queued: list[QueuedRecord] = []
    inflight: list[InflightRecord] = []
    undelivered_done: list[Done] = []
    # supervisor state
    engines: list[EngineStatus] = []
    leases: int = 0  # front door: slot leases wanted per model (fast path); 0: none


class Welcome(_Msg, tag="welcome"):
    """Scheduler's answer to a Hello; ``accepted=False`` with a reason on version mismatch."""

    instance: str  # the scheduler's instance id
    protocol_version: str
    accepted: bool = True
    reason: str = ""


class HelloRequired(_Msg, tag="hello_required"):
    """Sent to a peer whose identity the scheduler does not know (it has restarted)."""

    instance: str


class Heartbeat(_Msg, tag="hb"):
    """Application heartbeat both ways, every ``HEARTBEAT_INTERVAL_S``.

    ``digest`` is a cheap summary of the sender's state (counts); a mismatch with
    the receiver's view triggers a full Hello.  ``ack_done_seq`` (scheduler →
    front door) acknowledges every ``Done`` up to that sequence number, so the
    front door can forget them.
    """

    instance: str
    seq: int = 0
    digest: dict[str, int] = {}
    ack_done_seq: int = 0


# --------------------------------------------------------------------------- request path


class Submit(_Msg, RequestHeader, tag="submit"):
    """Front door → scheduler: a new request wants a slot (its ``RequestHeader``)."""

    lease_id: str = ""  # set: it already runs on ``engine_id`` in a leased slot
    engine_id: str = ""


class LeaseInfo(msgspec.Struct, omit_defaults=True):
    """One idle slot on an engine a front door may fill without asking (core/leases.py)."""

    lease_id: str
    model: str
    engine_id: str
    endpoint: str
    api_key: str = ""
    priority_sign: int = 0  # 0: the engine takes no priority
    heavy: list[str] = []  # tenants over their share when granted: not for them
    tier: int = 1  # the engine-priority tier to send at: one a light request can preempt


class Leases(_Msg, tag="leases"):
    """Scheduler → front door: leases granted, ids revoked; back: ``revoke`` = unused, and
    ``wants``: leases per model from now on (0 while the front door is busy; -1: as was)."""

    instance: str
    grant: list[LeaseInfo] = []
    revoke: list[str] = []
    wants: int = -1


class Dispatch(_Msg, tag="dispatch"):
    """Scheduler → front door: run it on this engine now."""

    request_id: str
    engine_id: str
    endpoint: str
    api_key: str = ""
    engine_priority: int | None = None  # already signed for the engine kind; None: do not send
    queue_wait_s: float = 0.0


class Reject(_Msg, tag="reject"):
    """Scheduler → front door: answer the client with this error."""

    request_id: str
    http_status: int
    code: str  # e.g. rate_limit_exceeded, tenant_queue_full, model_not_found, model_unavailable
    reason: str
    retry_after_s: float | None = None


class Cancel(_Msg, tag="cancel"):
    """Front door → scheduler: a queued (not yet dispatched) request was abandoned."""

    request_id: str


class Progress(_Msg, tag="progress"):
    """Front door → scheduler: completion tokens so far, batched per tick."""

    items: list[tuple[str, int]]  # (request_id, completion tokens so far)


class Done(_Msg, tag="done"):
    """Front door → scheduler: a dispatched request ended.  Exactly one per Dispatch."""

    request_id: str
    outcome: str = Outcome.OK
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_id: str = ""
    tenant: str = ""
    model: str = ""
    ttft_s: float | None = None
    seq: int = 0  # per front-door instance, for acknowledgement (Heartbeat.ack_done_seq)
    error: str = ""
    #: the engine could not be reached, or dropped the request before answering: the
    #: scheduler sends it nothing more until its supervisor reports it again
    engine_failed: bool = False
    lease_id: str = ""  # it ran on this lease: frees the slot if its Submit was lost


# --------------------------------------------------------------------------- state broadcast


class AuthEntry(msgspec.Struct, array_like=True):
    key_sha256: str
    tenant: str


class Snapshot(_Msg, tag="snapshot"):
    """Scheduler → front doors, on Welcome and about once a second, or when it changes.

    Carries what the front door needs without asking: the auth table (so keys
    added with infergridctl work at once), model states for /health and
    /v1/models, and tenant and engine stats for /metrics.
    """

    instance: str
    auth_version: int = 0
    auth: list[AuthEntry] | None = None  # None: unchanged since auth_version
    auth_none_tenant: str = ""  # non-empty when ``auth: none``
    models: list[ModelInfo] = []
    tenants: list[TenantStats] = []
    engines: list[EngineStatus] = []
    policy: str = ""
    gpus: list[GpuDevice] = []  # each GPU's ledger, for /metrics


# --------------------------------------------------------------------------- supervisor


class EngineUpdate(_Msg, tag="engine_update"):
    """Supervisor → scheduler: current status of every engine (full list, each poll)."""

    instance: str
    engines: list[EngineStatus]
    gpu_total_bytes: int = 0
    gpu_free_bytes: int = 0
    gpus: list[GpuDevice] = []  # one ledger per GPU; the totals above are their sums


class EngineCommand(_Msg, tag="engine_cmd"):
    """Scheduler → supervisor: change an engine's residency."""

    command_id: str
    engine_id: str
    action: Literal["start", "stop", "sleep", "wake", "restart"]
    level: int = 1  # for sleep
    #: stop: an operator's unload (reported back as ``EngineStatus.unloaded``), not
    #: an eviction; the model stays down until a start, across daemon restarts
    unload: bool = False


class EngineCommandResult(_Msg, tag="engine_cmd_result"):
    command_id: str
    engine_id: str
    ok: bool
    error: str = ""
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------- control socket


class ControlRequest(_Msg, tag="ctl"):
    """infergridctl → scheduler.  ``command`` names a module in ``scheduler/commands``."""

    command: str
    protocol_version: str
    args: dict[str, Any] = {}


class ControlReply(_Msg, tag="ctl_reply"):
    ok: bool
    result: Any = None
    error: str = ""
    #: exit status infergridctl should use: 0 ok, 2 bad input, 1 other failure
    exit_code: int = 0


Message = (
    Hello | Welcome | HelloRequired | Heartbeat | Submit | Leases | Dispatch | Reject | Cancel
    | Progress | Done | Snapshot | EngineUpdate | EngineCommand | EngineCommandResult
    | ControlRequest | ControlReply
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ProtocolError(ValueError):
    """Raised for bytes that are not a valid message; receive loops log and drop."""


def encode(msg: _Msg) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    """Decode one message; any malformed input raises ``ProtocolError`` and nothing else."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - garbage must never crash a receive loop
        raise ProtocolError(f"undecodable message: {exc!r}") from exc


#: Seconds between heartbeats, and after how many missed ones a peer counts as gone.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_MISSES = 6
