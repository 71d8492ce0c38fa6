"""Device side of CooperLLM: graph backends, the zeroth-order engine, device state, standalone training, client.

Nothing imported from here on the ONNX Runtime path may pull in torch or transformers: a phone has neither.
"""
