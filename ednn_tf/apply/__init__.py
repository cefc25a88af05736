"""Uses of a trained EDNN: streaming/sharded inference, the ASE calculator, the blur study, lattice and
atom Monte Carlo, thermodynamics."""
