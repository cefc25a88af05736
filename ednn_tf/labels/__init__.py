"""Structure -> label: oracles (GFN1-xTB, REBO, Tersoff, LJ), labelling with checkpoints, one worker
pool, Langevin MD, trajectory files. Never imports TensorFlow (worker processes stay light)."""
