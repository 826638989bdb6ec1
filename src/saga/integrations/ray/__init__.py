"""SAGA as the request router of Ray Serve (docs/ray.md).

* :mod:`.call` -- a call as it crosses Ray (:class:`RayCall`), read from an OpenAI request
  the way the gateway reads it;
* :mod:`.view` -- the Ray adapter of the scheduler interface (:class:`RayReplicaView`);
* :mod:`.routing` -- SAGA's routing decisions over those views, free of Ray (tiers, holds);
* :mod:`.state` -- what router replicas share (:class:`SagaState`, a named Ray actor);
* :mod:`.router` -- :class:`SagaRequestRouter`, Ray Serve's ``RequestRouter`` around
  :mod:`.routing`;
* :mod:`.deployments` -- the ingress, the emulator and vLLM replicas as Serve deployments.

Only :mod:`.router`, :mod:`.deployments` and :mod:`.app` import Ray; the rest is plain
Python, tested without it.
"""
