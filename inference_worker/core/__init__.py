"""The pure core: captures, features, ellipses and the model contract.

numpy and scipy only: nothing here imports a broker, a database, Redis, Flask or onnxruntime,
so every piece is tested on plain arrays.
"""
