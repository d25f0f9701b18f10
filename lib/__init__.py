"""The shared library of the scripts in scripts/, one package per concern. Imports point down this list only
(tests/test_structure.py checks it), so each package can be read with only the ones above it in mind:

    infra       one-line errors, seeds, atomic files and digests, locks, stop signals, figures
    settings    the typed schema of every setting (the flags, their defaults, the phase-I cache key) and the methods
    runs        a run on disk: its settings, members, predictions and their digests
    models      backbones of every family, their stages by name, pre-trained checkpoints
    data        the fine-tuning tasks, image sources, the GPU-side pipeline, evaluation sets
    core        the algorithms the paper names: cosine cycles, the similarity (RTD, MSE) and diversity losses,
                frozen stages
    evaluation  ensemble metrics (one registry), uncertainty, model soups, predictions, evaluating a saved run
    ensemble    a finished run put to use: load it as one module, predict on new images, export (ONNX), the model card
    training    the training loop, an experiment's members (phase I, cycles, the cache), the embedded pre-training
    analysis    results tables and the thesis' analyses of saved runs
    cli         the command line of the training scripts, derived from the settings schema
"""
