"""Structure -> grid: sheets and cells of atoms, and their Gaussian images (numpy and TF)."""
