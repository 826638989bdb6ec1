"""The emulator: engine-model replicas behind an OpenAI-compatible API, in real time.

See docs/gateway.md. :class:`saga.emulator.engine.Emulator` drives
:class:`saga.engine.replica.Replica` objects exactly as the simulator does, on a
:class:`saga.emulator.realtime.RealtimeEventLoop` instead of a simulated clock.
"""
