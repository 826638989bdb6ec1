"""The live runtime: an OpenAI-compatible HTTP gateway driving the scheduler core.

See docs/gateway.md. Public surface: :class:`saga.gateway.config.GatewayConfig`,
:func:`saga.gateway.config.load_config`, :class:`saga.gateway.app.Gateway`.
"""
