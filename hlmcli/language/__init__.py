"""The model language: level-by-level equations, .hlm files, hypotheses, MDM templates, lme4 formulas."""
