"""Where curvature pairs come from (sampled or path) and the models built from them."""
