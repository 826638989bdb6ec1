"""What goes over the wire between an agent, the gateway and an engine: the OpenAI request
bodies and errors (:mod:`.openai_api`) and prompt text to KV block runs (:mod:`.prefix`).

Shared by the gateway and the emulator, neither of which imports the other."""
