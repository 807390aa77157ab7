"""Data cooking (AdNanny §3): labeled raw rows -> the reasoning-augmented SFT corpus.

- ``prompts``: the cook prompts per task as data (steps, variations, the verifier's prompt);
- ``filters``: the rejection filters (schema, contradiction, boilerplate, grounding, self-consistency, keyword
  filters);
- ``pipeline``: the orchestration over callables (teacher generation, verifier scoring, embeddings);
- ``report``: ``cook_report.json``'s per-task counts and score histograms.

``megatron-ads cook`` (``cli.cook``) wires the inference engine and the frozen MiniLM embedder into it;
thresholds live in ``config.cook.CookConfig``.
"""
