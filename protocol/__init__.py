"""Wire formats shared by the node daemon and the coordinator. Pure: no I/O, no torch, no hivemind.

- version.py: PROTOCOL_VERSION and the compatibility rule.
- errors.py: the error hierarchy for rejected network input (each error names its rejection reason).
- encoding.py: the canonical byte encoding; the only bytes that are ever signed.
- signing.py: Ed25519 keys (generate, load, save with mode 0600, sign, verify); the only crypto import.
- messages.py: strict pydantic models (registration, team action, swarm manifest, presence, contribution report)
  and `check_fresh`, the clock-skew bound on signed actions.
- envelope.py: signed envelopes: seal a model with a key, open and verify received bytes.
- topics.py: every MQTT topic, with builders and a parser.
- tokens.py: what the coordinator's key vouches for: DHT access tokens, identity-binding statements, token requests.
"""
