"""The parts of ``train.py`` that other code shares or that would hide its loop: the flags,
the optimisation step, the learning-rate schedule, the weight EMA, checkpoints of a run,
distributed coordination and the metrics record."""
