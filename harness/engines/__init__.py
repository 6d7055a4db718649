"""Other trainers run on a harness config and data, so ``harness validate`` can judge them with the same
criteria (``training.engine``). Each engine looks like ``harness.training.Trainer`` to the evidence
collector: the plan (``total_steps``, ``warmup_steps``, ``steps_per_epoch``, ``epochs_planned``), then
``train()`` returning a ``harness.training.TrainResult`` whose last checkpoint is the saved adapter.
"""
