"""Baselines fxpgen is measured against, kept apart from the product path: the
conventional (gemmlowp / TFLite) multiplier requantizer, as numpy reference
(:mod:`.gemmlowp`) and as hardware (:mod:`.requant_mult`). fxpgen itself never uses
them; ``bench/requant_area.py`` synthesizes both units to measure what the shift saves."""
