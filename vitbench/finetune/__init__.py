"""Fine-tune benchmark: does a model (ported, or with its attention swapped) still learn, and at what cost?

``data`` (built-in datasets shipped in pip wheels, image folders, normalise/denormalise, sample grids), ``loop``
(top-k accuracy, optimizer, schedule, one training step, evaluation), ``job`` (one case in a worker process),
``plan`` (suite -> cases) and ``runner`` (cases -> rows, curves, tables, plots).
"""
