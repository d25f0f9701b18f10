"""Using a trained ensemble: load it as one module (load.py), predict on new images (predict.py), export it with
its model card and an ONNX graph (export.py, card.py), its soup as one network (soup.py)."""
