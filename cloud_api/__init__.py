"""CooperLLM cloud service: enrolment, rounds, report uploads, aggregation by seed replay, backprop rectifier.

Entry points: :func:`cloud_api.app.create_app` (the FastAPI app); `cooperllm serve` lives in the application layer
(``cooperllm_app.commands.serve``).
"""
