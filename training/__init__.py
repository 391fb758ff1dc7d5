"""How the shipped default model (weights/default.npz) was made: the torch recipe that trained it
(``python -m training.train``), its synthetic dataset (``training.synthetic_shapes``) and its evaluation with the
NumPy model (``python -m training.evaluate``). Run from the repository's top folder; not installed with numpy_vit.
"""
