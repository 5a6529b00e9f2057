"""ChiMed training backend: the ChiMed builder, the CPT -> SFT -> DPO stages and their evaluation."""
