"""Federated simulation on one machine: the real cloud service and N device clients, round by round.

``cooperllm simulate`` starts the cloud (``cooperllm serve`` under uvicorn on 127.0.0.1, SQLite in the run folder)
as a subprocess, and a few long-lived worker processes that play the devices: per round, K devices chosen from N
(seeded) each run one round through the real device client (``device_runtime.client.DeviceClient``) on their own
shard of the private training data, over an emulated link. A separate evaluator process scores the global θ after
every round on the test file. Everything a round produced is journalled in the run folder, so a killed simulation
continues from where it stopped.

Modules, one job each: ``config`` (options, the run folder's config), ``launcher`` (cloud and worker processes),
``worker`` (the device/evaluator process), ``bp_device`` (the FedAvg backprop device), ``metrics`` (journal and
per-round lines), ``resume`` (run-folder lock and what is already done), ``runner`` (the round loop), ``plots``
(a run folder as ``cooperllm report`` reads it, the summary table), ``figures`` (its figures), ``study`` (the
multi-seed study and its paired tests).
"""
