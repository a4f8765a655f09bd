"""The transport layer: how InferGrid's daemons talk to each other (DESIGN §4).

* ``sockets``: ZeroMQ sockets made the one way InferGrid uses them (the options
  that guard against real failure modes), the scheduler's bind lock, and the
  never-blocking send.
* ``peerlink``: the link a peer (front door, supervisor) holds to the scheduler:
  the Hello/Welcome/refusal handshake, heartbeats, and saying Hello again until a
  restarted scheduler knows it.  Each role subclasses it with its own state.
"""
