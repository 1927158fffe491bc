"""The stages of an analysis in order, inference, plausible values and HGLM runs."""
