"""What llmedge runs beside itself rather than serves with: the upstream simulator
(``python -m proxy.sim``, an OpenAI-compatible server with injectable faults) and
``llmedge demo``, which puts llmedge in front of three of them."""
