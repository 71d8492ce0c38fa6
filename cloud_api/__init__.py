"""CooperLLM cloud service: enrolment, rounds, report uploads, aggregation by seed replay, backprop rectifier.

Entry points: :func:`cloud_api.app.create_app` (the FastAPI app) and ``cooperllm serve`` (``cloud_api.cli``).
"""
