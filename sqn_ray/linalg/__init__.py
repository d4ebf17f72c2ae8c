"""Small dense linear algebra of the curvature models: L-BFGS and SR1 compact forms, TR subproblems."""
